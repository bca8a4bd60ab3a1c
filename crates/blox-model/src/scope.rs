//! Which account and region one blox mirrors, and where an ECS resource comes from. Entities are keyed
//! by cluster *name*, so an event of another account's (or region's) cluster of the same name would
//! overwrite the mirrored one's tasks: such events are refused, with [`Scope::check`].

use thiserror::Error;

use crate::arn::{Arn, ArnError};

/// The account and region of an ECS resource, read from its ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub account: String,
    pub region: String,
}

impl Origin {
    pub fn of_arn(arn: &str) -> Result<Origin, ArnError> {
        let arn = Arn::parse(arn)?;
        Ok(Origin {
            account: arn.account.to_owned(),
            region: arn.region.to_owned(),
        })
    }
}

/// What one blox mirrors: one account and one region. Either may be unknown (not yet learnt): what is
/// unknown is not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub account: Option<String>,
    pub region: Option<String>,
}

impl Scope {
    /// `Err` when `origin` is another account or region than the one mirrored.
    pub fn check(&self, origin: &Origin) -> Result<(), Foreign> {
        if let Some(mirrored) = &self.account
            && *mirrored != origin.account
        {
            return Err(Foreign::Account {
                event: origin.account.clone(),
                mirrored: mirrored.clone(),
            });
        }
        if let Some(mirrored) = &self.region
            && *mirrored != origin.region
        {
            return Err(Foreign::Region {
                event: origin.region.clone(),
                mirrored: mirrored.clone(),
            });
        }
        Ok(())
    }
}

/// An event of a resource outside the mirrored account or region.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Foreign {
    #[error("the event is from account {event}, but blox mirrors account {mirrored}")]
    Account { event: String, mirrored: String },
    #[error("the event is from region {event}, but blox mirrors region {mirrored}")]
    Region { event: String, mirrored: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_known_is_checked() {
        let origin = Origin::of_arn("arn:aws:ecs:eu-west-1:111122223333:cluster/prod").unwrap();
        assert_eq!(
            origin,
            Origin {
                account: "111122223333".into(),
                region: "eu-west-1".into()
            }
        );
        let scope = |account: Option<&str>, region: Option<&str>| Scope {
            account: account.map(str::to_owned),
            region: region.map(str::to_owned),
        };
        // (scope, expected error)
        let cases = [
            (scope(None, None), None),
            (scope(Some("111122223333"), None), None),
            (scope(None, Some("eu-west-1")), None),
            (scope(Some("111122223333"), Some("eu-west-1")), None),
            (
                scope(Some("444455556666"), Some("eu-west-1")),
                Some("the event is from account 111122223333, but blox mirrors account 444455556666"),
            ),
            (
                scope(Some("111122223333"), Some("us-east-1")),
                Some("the event is from region eu-west-1, but blox mirrors region us-east-1"),
            ),
            (
                scope(None, Some("us-east-1")),
                Some("the event is from region eu-west-1, but blox mirrors region us-east-1"),
            ),
        ];
        for (scope, expected) in cases {
            assert_eq!(
                scope.check(&origin).err().map(|e| e.to_string()).as_deref(),
                expected,
                "{scope:?}"
            );
        }
        assert!(Origin::of_arn("nope").is_err());
    }
}
