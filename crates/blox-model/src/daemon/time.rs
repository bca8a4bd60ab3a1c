//! Times are milliseconds since the Unix epoch in Rust and RFC 3339 strings (with milliseconds) on the
//! wire, like the entities' own times.

use std::time::UNIX_EPOCH;

/// Milliseconds since the epoch of an RFC 3339 time (ECS's `startedAt`, `stoppedAt`, `updatedAt`).
pub fn parse_rfc3339_ms(text: &str) -> Result<u64, String> {
    let time = humantime::parse_rfc3339_weak(text).map_err(|e| format!("{text:?}: {e}"))?;
    let since = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?;
    u64::try_from(since.as_millis()).map_err(|_| format!("{text:?} is too far in the future"))
}

/// `u64` milliseconds since the epoch as RFC 3339 with milliseconds.
pub(crate) mod rfc3339 {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::emit::rfc3339_millis(*ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_rfc3339_ms(&text).map_err(D::Error::custom)
    }
}

pub(crate) mod rfc3339_opt {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => super::rfc3339::serialize(ms, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::parse_rfc3339_ms(&text).map_err(D::Error::custom))
            .transpose()
    }
}
