//! Who may call the API. With `--auth-token-file`, every request but `/healthz` and `/readyz` needs
//! `Authorization: Bearer TOKEN` with a token of the file: a `read` token may read (GET and HEAD:
//! lists, gets, streams, metrics, the OpenAPI document and its docs), an `admin` token may do
//! anything. No usable token: 401; a read token on a write: 403; both the API's JSON error body.
//! What needs which role follows from the method alone, so that a route added later is covered.
//!
//! Tokens are kept as SHA-256 digests only and compared in constant time: the digest of what a
//! client sends is compared with every configured digest, without stopping at a match. They are
//! never logged nor echoed (not in errors about the file either: a line is named by its number),
//! and the `Authorization` header is removed from a request once checked, so that nothing after
//! this layer can log it.
//!
//! The token file: one `ROLE TOKEN` per line, ROLE `read` or `admin`, the two separated by spaces or
//! tabs; blank lines and lines whose first non-blank character is `#` are skipped. A token is 16 to
//! 4096 visible ASCII characters (`!` to `~`: what an HTTP header carries). Anything else — another
//! number of fields, another role, a short token, a token listed twice, no token at all — refuses
//! the start with the line's number.

use std::fmt;
use std::path::{Path, PathBuf};

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use subtle::{Choice, ConstantTimeEq};

use crate::error::ApiError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every GET and HEAD: lists, gets, streams, metrics, the OpenAPI document.
    Read,
    /// Everything.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Role> {
        match text {
            "read" => Some(Role::Read),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Whether this role may make a request with `method`: reads are the safe methods.
    pub fn allows(self, method: &Method) -> bool {
        self == Role::Admin || method.is_safe()
    }
}

/// The paths that answer without a token: probes of load balancers and orchestrators. They say
/// nothing about ECS.
pub const OPEN_PATHS: &[&str] = &["/healthz", "/readyz"];

/// Whether a path answers without a token: [`OPEN_PATHS`], and the dashboard's page, assets and
/// session probe (`/`, `/ui/…` but its data under `/ui/api/`), which hold no data: the page asks
/// for a token and sends it with every call.
pub fn is_open(path: &str) -> bool {
    OPEN_PATHS.contains(&path) || crate::ui::is_shell(path)
}

/// The shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;
/// The longest token accepted (a header of that size is still far below any server limit).
pub const MAX_TOKEN_LEN: usize = 4096;

type Digest = [u8; 32];

fn digest(token: &[u8]) -> Digest {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token).as_ref());
    out
}

/// The tokens of a token file, as digests.
pub struct Tokens {
    entries: Vec<(Digest, Role)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Counts only: a digest of a short or guessable token would help an attacker offline.
        f.debug_struct("Tokens")
            .field("read", &self.count(Role::Read))
            .field("admin", &self.count(Role::Admin))
            .finish()
    }
}

/// Why a token file was refused. Never holds a token or a line's text.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the token file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the token file {}, line {line}: {problem}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error(
        "the token file {} holds no token: write one `ROLE TOKEN` line per token, ROLE read or admin",
        path.display()
    )]
    Empty { path: PathBuf },
}

impl Tokens {
    /// Reads and checks a token file.
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        let bytes = std::fs::read(path).map_err(|source| TokenFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| TokenFileError::Read {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
        })?;
        let tokens = Tokens::parse(&text, path)?;
        warn_if_readable_by_others(path);
        Ok(tokens)
    }

    /// Checks the text of a token file; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Tokens, TokenFileError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut entries: Vec<(Digest, Role)> = Vec::new();
        let mut lines_of: Vec<usize> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let failed = |problem: String| TokenFileError::Line {
                path: path.to_owned(),
                line: number,
                problem,
            };
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = trimmed.split_whitespace().collect();
            let [role, token] = fields[..] else {
                return Err(failed(format!(
                    "expected `ROLE TOKEN` (two fields separated by spaces), found {} field{} \
                     (the line is not shown: it may hold a token; comments take a line of their own)",
                    fields.len(),
                    if fields.len() == 1 { "" } else { "s" },
                )));
            };
            let Some(role) = Role::parse(role) else {
                return Err(failed(
                    "the first field must be the role, read or admin (the line is not shown: it may \
                     hold a token)"
                        .into(),
                ));
            };
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(failed(
                    "the token holds a character other than visible ASCII (`!` to `~`), which an \
                     HTTP header cannot carry"
                        .into(),
                ));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(failed(format!(
                    "the token has {} characters; at least {MIN_TOKEN_LEN} are needed (e.g. the \
                     output of `openssl rand -hex 32`)",
                    token.len()
                )));
            }
            if token.len() > MAX_TOKEN_LEN {
                return Err(failed(format!(
                    "the token has {} characters; at most {MAX_TOKEN_LEN} are accepted",
                    token.len()
                )));
            }
            let digest = digest(token.as_bytes());
            // Loading is not exposed to clients: an ordinary comparison is fine here.
            if let Some(first) = entries.iter().position(|(d, _)| *d == digest) {
                return Err(failed(format!(
                    "the same token as line {}: give each token one role",
                    lines_of[first]
                )));
            }
            entries.push((digest, role));
            lines_of.push(number);
        }
        if entries.is_empty() {
            return Err(TokenFileError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Tokens { entries })
    }

    /// The role of `token`, if it is one of these. Takes the same time whichever token matches,
    /// and whether any does (for a given number of tokens).
    pub fn role(&self, token: &[u8]) -> Option<Role> {
        let presented = digest(token);
        let mut read = Choice::from(0);
        let mut admin = Choice::from(0);
        for (digest, role) in &self.entries {
            let equal = digest.ct_eq(&presented);
            match role {
                Role::Read => read |= equal,
                Role::Admin => admin |= equal,
            }
        }
        // Tokens are unique (checked at load), so at most one of the two is set.
        if bool::from(admin) {
            Some(Role::Admin)
        } else if bool::from(read) {
            Some(Role::Read)
        } else {
            None
        }
    }

    /// How many tokens have `role`.
    pub fn count(&self, role: Role) -> usize {
        self.entries.iter().filter(|(_, r)| *r == role).count()
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o004 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "the token file is readable by every user of this machine; consider chmod 600"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

/// Why a request was refused; the `reason` label of [`crate::metrics::API_AUTH_FAILURES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not one `Bearer TOKEN`.
    Malformed,
    /// A bearer token that is not one of the file's.
    Invalid,
    /// A read token on a write.
    Forbidden,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Invalid => "invalid",
            Refusal::Forbidden => "forbidden",
        }
    }

    /// The 401 or 403 (JSON), counted in [`crate::metrics::API_AUTH_FAILURES`].
    pub fn response(self, method: &Method) -> Response {
        ::metrics::counter!(crate::metrics::API_AUTH_FAILURES, "reason" => self.reason()).increment(1);
        let (status, code, message) = match self {
            Refusal::Missing => (
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "this blox requires a token: send `Authorization: Bearer TOKEN` (the CLI: --token or \
                 BLOX_TOKEN)"
                    .to_owned(),
            ),
            Refusal::Malformed => (
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "the Authorization header must be one `Bearer TOKEN`".to_owned(),
            ),
            Refusal::Invalid => (
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "the token is not valid for this blox".to_owned(),
            ),
            Refusal::Forbidden => (
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!("a read token cannot {method}: changes need an admin token"),
            ),
        };
        let mut response = ApiError {
            status,
            code,
            message,
            field: None,
            details: None,
        }
        .into_response();
        if status == StatusCode::UNAUTHORIZED {
            let challenge = if self == Refusal::Invalid {
                "Bearer realm=\"blox\", error=\"invalid_token\""
            } else {
                "Bearer realm=\"blox\""
            };
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

/// The token of an `Authorization: Bearer TOKEN` header (the scheme in any case, RFC 7235).
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let bytes = value.as_bytes();
    let space = bytes.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = bytes.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty() && token.iter().all(u8::is_ascii_graphic)).then_some(token)
}

/// The role of a request's token, or why it has none.
pub fn authenticate(tokens: &Tokens, headers: &axum::http::HeaderMap) -> Result<Role, Refusal> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    match (values.next(), values.next()) {
        (None, _) => Err(Refusal::Missing),
        (Some(value), None) => {
            let token = bearer(value).ok_or(Refusal::Malformed)?;
            tokens.role(token).ok_or(Refusal::Invalid)
        }
        (Some(_), Some(_)) => Err(Refusal::Malformed),
    }
}

/// The token check, made by the request guard ([`crate::limits`]) inside the in-flight gate: with
/// tokens, a request but to [`OPEN_PATHS`] goes on only with a token whose role allows its method,
/// and leaves without its `Authorization` header; without tokens (`None`), every request goes on.
/// `Err` says why it may not.
pub fn check(tokens: Option<&Tokens>, request: &mut Request) -> Result<(), Refusal> {
    let Some(tokens) = tokens else {
        return Ok(());
    };
    if is_open(request.uri().path()) {
        return Ok(());
    }
    match authenticate(tokens, request.headers()) {
        Ok(role) if role.allows(request.method()) => {}
        Ok(_) => return Err(Refusal::Forbidden),
        Err(refusal) => return Err(refusal),
    }
    request.headers_mut().remove(header::AUTHORIZATION);
    Ok(())
}

/// Declares the bearer scheme in the OpenAPI document: every operation but those of [`is_open`]
/// takes a token when blox runs with a token file (and none otherwise), may answer 401, and a
/// write 403.
pub struct BearerDoc;

impl utoipa::Modify for BearerDoc {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "With --auth-token-file: a read token for GET, an admin token for every method; \
                 /healthz and /readyz need none.",
            ))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
        for (name, description) in [
            (
                "Unauthorized",
                "No usable token: none, not `Bearer TOKEN`, or unknown.",
            ),
            ("Forbidden", "A read token on a write."),
        ] {
            let error = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build();
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/json", error)
                .build();
            components.responses.insert(name.to_owned(), RefOr::T(response));
        }
        // A token, or none when blox runs without a token file.
        let security = vec![
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::default(),
        ];
        for (path, item) in openapi.paths.paths.iter_mut() {
            if is_open(path) {
                continue;
            }
            let operations = [
                (&mut item.get, true),
                (&mut item.head, true),
                (&mut item.put, false),
                (&mut item.post, false),
                (&mut item.delete, false),
                (&mut item.patch, false),
                (&mut item.options, false),
                (&mut item.trace, false),
            ];
            for (operation, read) in operations {
                let Some(operation) = operation else { continue };
                operation.security = Some(security.clone());
                let responses = &mut operation.responses.responses;
                responses.insert("401".into(), RefOr::Ref(Ref::from_response_name("Unauthorized")));
                if !read {
                    responses.insert("403".into(), RefOr::Ref(Ref::from_response_name("Forbidden")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: &str = "read-token-0123456789";
    const ADMIN: &str = "admin-token-0123456789";

    fn parse(text: &str) -> Result<Tokens, TokenFileError> {
        Tokens::parse(text, Path::new("tokens.txt"))
    }

    fn line_error(text: &str) -> (usize, String) {
        match parse(text) {
            Err(TokenFileError::Line { line, problem, .. }) => (line, problem),
            other => panic!("expected a line error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn a_file_gives_each_token_its_role() {
        let tokens = parse(&format!(
            "\u{feff}# blox tokens\n\n  read {READ}  \r\n\tadmin\t{ADMIN}\n   # indented comment\n"
        ))
        .unwrap();
        assert_eq!(tokens.role(READ.as_bytes()), Some(Role::Read));
        assert_eq!(tokens.role(ADMIN.as_bytes()), Some(Role::Admin));
        assert_eq!(tokens.role(b"read-token-012345678"), None);
        assert_eq!(tokens.role(b""), None);
        assert_eq!(format!("{tokens:?}"), "Tokens { read: 1, admin: 1 }");
    }

    #[test]
    fn bad_lines_are_named_by_number_and_never_shown() {
        let secret = "s3cret-s3cret-s3cret";
        for (text, line, says) in [
            (format!("read {READ}\nadmin\n"), 2, "found 1 field"),
            (format!("read {secret} # mine\n"), 1, "found 4 fields"),
            (format!("{secret} read\n"), 1, "the first field must be the role"),
            (format!("Admin {secret}\n"), 1, "the first field must be the role"),
            ("# x\nread short\n".to_owned(), 2, "has 5 characters; at least 16"),
            (format!("read {secret}é\n"), 1, "visible ASCII"),
            (
                format!("read {}\n", "x".repeat(MAX_TOKEN_LEN + 1)),
                1,
                "at most 4096",
            ),
            (
                format!("read {secret}\n\nadmin {secret}\n"),
                3,
                "the same token as line 1",
            ),
        ] {
            let (got, problem) = line_error(&text);
            assert_eq!(got, line, "{text:?}: {problem}");
            assert!(problem.contains(says), "{text:?}: {problem}");
            assert!(!problem.contains(secret), "{problem}");
        }
        let err = parse("# only comments\n\n").unwrap_err();
        assert!(matches!(err, TokenFileError::Empty { .. }), "{err:?}");
        assert!(err.to_string().contains("tokens.txt holds no token"), "{err}");
        let err = line_error("read\n").1;
        assert!(err.contains("found 1 field ("), "{err}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = Tokens::load(Path::new("/nonexistent/blox-tokens")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read the token file /nonexistent/blox-tokens: "),
            "{err}"
        );
    }

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        let value = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(bearer(&value("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&value("bearer   abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(&value("Basic abc")), None);
        assert_eq!(bearer(&value("Bearer")), None);
        assert_eq!(bearer(&value("Bearer ")), None);
        assert_eq!(bearer(&value("Bearer a b")), None);
        assert_eq!(bearer(&value("abc")), None);
    }

    #[test]
    fn reads_are_the_safe_methods() {
        for method in [Method::GET, Method::HEAD] {
            assert!(Role::Read.allows(&method));
        }
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert!(!Role::Read.allows(&method), "{method}");
            assert!(Role::Admin.allows(&method), "{method}");
        }
    }
}
