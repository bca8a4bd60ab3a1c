//! Strict query-string parsing: every parameter must be one the endpoint knows, and given once. Blox
//! v0.3 answered unknown or repeated filters with 400, and so do we, naming the parameter.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use blox_model::ClusterRef;
use blox_store::Cursor;

use crate::error::ApiError;

/// The parameters of one request, each known and given once.
#[derive(Debug, Default)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Params, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| {
            ApiError::bad_request(
                "query",
                "InvalidQuery",
                format!("the query string does not parse: {e}"),
            )
        })?;
        let mut params = BTreeMap::new();
        for (key, value) in pairs {
            if !allowed.contains(&key.as_str()) {
                return Err(ApiError::bad_request(
                    key.clone(),
                    "UnsupportedParameter",
                    format!(
                        "unsupported query parameter {key:?}; supported: {}",
                        allowed.join(", ")
                    ),
                ));
            }
            if params.contains_key(&key) {
                return Err(ApiError::bad_request(
                    key.clone(),
                    "RepeatedParameter",
                    format!("query parameter {key:?} is given more than once"),
                ));
            }
            params.insert(key, value);
        }
        Ok(Params(params))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn cluster(&self) -> Result<Option<ClusterRef>, ApiError> {
        self.get("cluster")
            .map(|v| parse_cluster("cluster", v))
            .transpose()
    }

    /// A status filter, upper-cased and checked against the statuses ECS documents.
    pub fn status(&self, known: &[&str]) -> Result<Option<String>, ApiError> {
        let Some(value) = self.get("status") else {
            return Ok(None);
        };
        let upper = value.to_ascii_uppercase();
        if known.contains(&upper.as_str()) {
            Ok(Some(upper))
        } else {
            let known: Vec<String> = known.iter().map(|s| s.to_ascii_lowercase()).collect();
            Err(ApiError::bad_request(
                "status",
                "InvalidStatus",
                format!("invalid status {value:?}; expected one of {}", known.join(", ")),
            ))
        }
    }

    /// `startedBy`, matched exactly, as v0.3 matched it: any value, even one ECS would never give a
    /// task, is a filter (that matches nothing), not an error. Only an empty one is refused.
    pub fn started_by(&self) -> Result<Option<String>, ApiError> {
        match self.get("startedBy") {
            None => Ok(None),
            Some("") => Err(ApiError::bad_request(
                "startedBy",
                "InvalidStartedBy",
                "startedBy is empty: give the exact startedBy of the tasks, or leave it out",
            )),
            Some(value) => Ok(Some(value.to_owned())),
        }
    }

    /// `maxResults`: a page size from 1 to 10,000; absent means everything.
    pub fn max_results(&self) -> Result<Option<usize>, ApiError> {
        let Some(value) = self.get("maxResults") else {
            return Ok(None);
        };
        match value.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::bad_request(
                "maxResults",
                "InvalidMaxResults",
                format!("invalid maxResults {value:?}: expected an integer from 1 to {MAX_PAGE}"),
            )),
        }
    }

    pub fn next_token(&self) -> Result<Option<Cursor>, ApiError> {
        let Some(value) = self.get("nextToken") else {
            return Ok(None);
        };
        match TOKENS.decode(value) {
            Ok(bytes) if !bytes.is_empty() => Ok(Some(Cursor(bytes))),
            _ => Err(ApiError::bad_request(
                "nextToken",
                "InvalidNextToken",
                "invalid nextToken: pass back the nextToken of a previous answer unchanged",
            )),
        }
    }

    pub fn entity_version(&self) -> Result<Option<u64>, ApiError> {
        let Some(value) = self.get("entityVersion") else {
            return Ok(None);
        };
        value.parse::<u64>().map(Some).map_err(|_| {
            ApiError::bad_request(
                "entityVersion",
                "InvalidEntityVersion",
                format!("invalid entityVersion {value:?}: expected a non-negative integer"),
            )
        })
    }
}

pub const MAX_PAGE: usize = 10_000;

/// Decodes page tokens without insisting on canonical trailing bits: a token is an untrusted cursor
/// anyway (the store clamps it), so any well-formed base64url string is accepted.
const TOKENS: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
);

pub fn encode_token(cursor: &Cursor) -> String {
    URL_SAFE_NO_PAD.encode(&cursor.0)
}

pub fn parse_cluster(field: &str, value: &str) -> Result<ClusterRef, ApiError> {
    ClusterRef::parse(value).map_err(|e| {
        ApiError::bad_request(
            field,
            "InvalidCluster",
            format!("invalid cluster name or ARN: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOWED: &[&str] = &["status", "cluster", "startedBy", "maxResults", "nextToken"];

    fn check(query: &str, want: Result<(), (&str, &str)>) {
        let got = Params::parse(Some(query), ALLOWED).and_then(|p| {
            p.cluster()?;
            p.status(blox_model::TASK_STATUSES)?;
            p.started_by()?;
            p.max_results()?;
            p.next_token()?;
            Ok(())
        });
        match (got, want) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err((field, code))) => {
                assert_eq!(
                    (e.field.as_deref(), e.code),
                    (Some(field), code),
                    "{query}: {}",
                    e.message
                )
            }
            (got, want) => panic!("{query}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn params() {
        check("", Ok(()));
        check(
            "status=running&cluster=prod&startedBy=ecs-svc/123&maxResults=5&nextToken=AQ",
            Ok(()),
        );
        check("status=RUNNING", Ok(()));
        check("status=Stopped", Ok(()));
        check("status=deactivating", Ok(()));
        check("cluster=arn:aws:ecs:us-east-1:123456789012:cluster/prod", Ok(()));
        check(
            "cluster=arn%3Aaws-cn%3Aecs%3Acn-north-1%3A123456789012%3Acluster%2Fprod",
            Ok(()),
        );
        check("color=red", Err(("color", "UnsupportedParameter")));
        check(
            "status=running&status=stopped",
            Err(("status", "RepeatedParameter")),
        );
        check("status=sleeping", Err(("status", "InvalidStatus")));
        check("status=", Err(("status", "InvalidStatus")));
        check("cluster=bad%20name", Err(("cluster", "InvalidCluster")));
        check("cluster=", Err(("cluster", "InvalidCluster")));
        check(
            "cluster=arn:aws:ecs:us-east-1:123456789012:task/prod",
            Err(("cluster", "InvalidCluster")),
        );
        check("startedBy=", Err(("startedBy", "InvalidStartedBy")));
        // Matches nothing ECS starts, but v0.3 answered it with an empty list, not an error.
        check("startedBy=a%20b", Ok(()));
        check("maxResults=0", Err(("maxResults", "InvalidMaxResults")));
        check("maxResults=10001", Err(("maxResults", "InvalidMaxResults")));
        check("maxResults=ten", Err(("maxResults", "InvalidMaxResults")));
        check("nextToken=!!", Err(("nextToken", "InvalidNextToken")));
        check("nextToken=", Err(("nextToken", "InvalidNextToken")));
    }
}
