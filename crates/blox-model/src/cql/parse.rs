//! A recursive-descent parser over the query's characters. Tokens depend on where they occur
//! (`!` negates before a subject, but starts `!=` or `!exists` after one), so there is no
//! separate lexer.

use super::value::{Located, compile};
use super::{Operator, ParseError, Predicate, Property, Query};

pub(super) fn parse(input: &str) -> Result<Query, ParseError> {
    let mut parser = Parser { input, position: 0 };
    let query = parser.expression()?;
    parser.skip_whitespace();
    match parser.peek() {
        None => Ok(query),
        Some(')') => Err(parser.error_here("unbalanced parentheses: `)` without a matching `(`")),
        // Right after a predicate, as in `attribute:x == f(y)`.
        Some('(') => Err(parser.error_here(NO_PARENTHESES)),
        Some(_) => Err(parser.error_here("expected `&&`, `and`, `||`, `or` or the end of the query")),
    }
}

/// Characters of a bare-word literal.
pub(super) fn is_bare_word_char(c: char) -> bool {
    !c.is_whitespace() && !matches!(c, ',' | '[' | ']' | '(' | ')' | '\'')
}

/// Characters of subjects (attribute names included) and keywords.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | ':')
}

const NO_PARENTHESES: &str = "A single expression can't contain parentheses";

/// Operators spelled with symbols, longest first so that `>=` is not read as `>`.
const SYMBOL_OPERATORS: [(&str, Operator); 8] = [
    ("==", Operator::Equals),
    ("!=", Operator::NotEquals),
    (">=", Operator::GreaterThanEqual),
    ("<=", Operator::LessThanEqual),
    ("=~", Operator::Matches),
    ("!~", Operator::NotMatches),
    (">", Operator::GreaterThan),
    ("<", Operator::LessThan),
];

fn word_operator(word: &str) -> Option<Operator> {
    Some(match word {
        "equals" => Operator::Equals,
        "not_equals" => Operator::NotEquals,
        "greater_than" => Operator::GreaterThan,
        "greater_than_equal" => Operator::GreaterThanEqual,
        "less_than" => Operator::LessThan,
        "less_than_equal" => Operator::LessThanEqual,
        "in" => Operator::In,
        "not_in" | "!in" => Operator::NotIn,
        "matches" => Operator::Matches,
        "not_matches" => Operator::NotMatches,
        "exists" => Operator::Exists,
        "not_exists" | "!exists" => Operator::NotExists,
        _ => return None,
    })
}

struct Parser<'a> {
    input: &'a str,
    position: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.input[self.position..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_whitespace(&mut self) {
        let rest = self.rest();
        self.position += rest.len() - rest.trim_start().len();
    }

    fn error_at(position: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            position,
            message: message.into(),
        }
    }

    fn error_here(&self, message: impl Into<String>) -> ParseError {
        Self::error_at(self.position, message)
    }

    /// Consumes `symbol` if the input continues with it.
    fn eat(&mut self, symbol: &str) -> bool {
        let found = self.rest().starts_with(symbol);
        if found {
            self.position += symbol.len();
        }
        found
    }

    /// The run of name characters at the cursor (maybe empty), without consuming it.
    fn peek_name(&self) -> &'a str {
        let rest = self.rest();
        let end = rest.find(|c| !is_name_char(c)).unwrap_or(rest.len());
        &rest[..end]
    }

    /// Consumes the keyword `word` if it stands alone at the cursor (`and` but not `android`).
    fn eat_keyword(&mut self, word: &str) -> bool {
        let found = self.peek_name() == word;
        if found {
            self.position += word.len();
        }
        found
    }

    fn expression(&mut self) -> Result<Query, ParseError> {
        let mut query = self.term()?;
        loop {
            self.skip_whitespace();
            if self.eat("||") || self.eat_keyword("or") {
                query = Query::Or(Box::new(query), Box::new(self.term()?));
            } else {
                return Ok(query);
            }
        }
    }

    fn term(&mut self) -> Result<Query, ParseError> {
        let mut query = self.factor()?;
        loop {
            self.skip_whitespace();
            if self.eat("&&") || self.eat_keyword("and") {
                query = Query::And(Box::new(query), Box::new(self.factor()?));
            } else {
                return Ok(query);
            }
        }
    }

    fn factor(&mut self) -> Result<Query, ParseError> {
        self.skip_whitespace();
        if self.eat("!") || self.eat_keyword("not") {
            return Ok(Query::Not(Box::new(self.factor()?)));
        }
        let open = self.position;
        if self.eat("(") {
            let query = self.expression()?;
            self.skip_whitespace();
            if !self.eat(")") {
                return Err(match self.peek() {
                    None => self.error_here(format!(
                        "unbalanced parentheses: `(` at column {} is not closed",
                        open + 1
                    )),
                    Some('(') => self.error_here(NO_PARENTHESES),
                    Some(_) => self.error_here("expected `)`, `&&`, `and`, `||` or `or`"),
                });
            }
            return Ok(query);
        }
        self.predicate().map(Query::Predicate)
    }

    fn predicate(&mut self) -> Result<Predicate, ParseError> {
        let property = self.subject()?;
        self.skip_whitespace();
        let operator_position = self.position;
        let operator = self.operator()?;
        if !property.takes(operator) {
            let taken: Vec<&str> = Operator::ALL
                .iter()
                .filter(|&&o| property.takes(o))
                .map(|o| o.symbol())
                .collect();
            return Err(Self::error_at(
                operator_position,
                format!(
                    "{property} does not take `{operator}` (it takes {})",
                    taken.join(", ")
                ),
            ));
        }
        let arguments = if operator.takes_argument() {
            self.argument(operator)?
        } else {
            Vec::new()
        };
        let compiled = compile(&property, operator, &arguments)?;
        Ok(Predicate {
            property,
            operator,
            arguments: arguments
                .into_iter()
                .map(|argument| argument.text.to_owned())
                .collect(),
            compiled,
        })
    }

    fn subject(&mut self) -> Result<Property, ParseError> {
        let start = self.position;
        let name = self.peek_name();
        self.position += name.len();
        if self.peek() == Some('(') && !name.is_empty() {
            return Err(self.error_here(NO_PARENTHESES));
        }
        Ok(match name {
            "agentConnected" => Property::AgentConnected,
            "agentVersion" => Property::AgentVersion,
            "ec2InstanceId" => Property::Ec2InstanceId,
            "ec2InstanceType" => Property::Ec2InstanceType,
            "registeredAt" => Property::RegisteredAt,
            "runningTasksCount" => Property::RunningTasksCount,
            "task:group" => Property::TaskGroup,
            "" if self.peek().is_none() => {
                return Err(self.error_here("expected an expression, found the end of the query"));
            }
            "" => return Err(self.error_here("expected a subject, `(`, `!` or `not`")),
            _ => match name.strip_prefix("attribute:") {
                Some("") => return Err(self.error_here("expected an attribute name after `attribute:`")),
                Some(attribute) => Property::Attribute(attribute.to_owned()),
                None => {
                    return Err(Self::error_at(
                        start,
                        format!(
                            "unknown subject `{name}` (expected agentConnected, agentVersion, ec2InstanceId, \
                         ec2InstanceType, registeredAt, runningTasksCount, task:group or attribute:NAME)"
                        ),
                    ));
                }
            },
        })
    }

    fn operator(&mut self) -> Result<Operator, ParseError> {
        // Word operators (with `!in` and `!exists`) end at a word boundary: `in[a]` is `in`.
        let rest = self.rest();
        let word_end = rest
            .char_indices()
            .skip(usize::from(rest.starts_with('!')))
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(rest.len(), |(index, _)| index);
        if let Some(operator) = word_operator(&rest[..word_end]) {
            self.position += word_end;
            return Ok(operator);
        }
        for (symbol, operator) in SYMBOL_OPERATORS {
            if self.eat(symbol) {
                return Ok(operator);
            }
        }
        Err(match self.peek() {
            None => self.error_here("expected an operator, found the end of the query"),
            Some('(' | ')') => self.error_here(NO_PARENTHESES),
            Some(c) if word_end == 0 => self.error_here(format!("expected an operator, found `{c}`")),
            Some(_) => self.error_here(format!("expected an operator, found `{}`", &rest[..word_end])),
        })
    }

    /// The argument of `operator`: a list for `in` / `not_in`, one literal otherwise.
    fn argument(&mut self, operator: Operator) -> Result<Vec<Located<'a>>, ParseError> {
        self.skip_whitespace();
        let open = self.position;
        if !self.eat("[") {
            return Ok(vec![self.literal()?]);
        }
        if !operator.takes_list() {
            return Err(Self::error_at(
                open,
                format!("`{operator}` takes a single value, not a list"),
            ));
        }
        self.skip_whitespace();
        if self.eat("]") {
            return Err(Self::error_at(open, "empty list"));
        }
        let mut items = vec![self.literal()?];
        loop {
            self.skip_whitespace();
            if self.eat("]") {
                return Ok(items);
            }
            if !self.eat(",") {
                return Err(match self.peek() {
                    None => self.error_here(format!("unclosed list: `[` at column {} has no `]`", open + 1)),
                    Some(_) => self.error_here("expected `,` or `]`"),
                });
            }
            self.skip_whitespace();
            items.push(self.literal()?);
        }
    }

    fn literal(&mut self) -> Result<Located<'a>, ParseError> {
        let start = self.position;
        let rest = self.rest();
        if let Some(quoted) = rest.strip_prefix('\'') {
            let Some(end) = quoted.find('\'') else {
                return Err(self.error_here("unclosed quote: `'` without a matching `'`"));
            };
            self.position += end + 2;
            return Ok(Located {
                text: &quoted[..end],
                position: start,
            });
        }
        let end = rest.find(|c| !is_bare_word_char(c)).unwrap_or(rest.len());
        if end == 0 {
            return Err(match self.peek() {
                Some('(') => self.error_here(NO_PARENTHESES),
                None => self.error_here("missing argument: found the end of the query"),
                Some(c) => self.error_here(format!("missing argument: found `{c}`")),
            });
        }
        self.position += end;
        Ok(Located {
            text: &rest[..end],
            position: start,
        })
    }
}
