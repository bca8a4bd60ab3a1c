//! What the store can key and index by. The store refuses a write whose key (cluster, id) or indexed
//! fields (status, startedBy) break this rule, failing its whole batch; event parsing applies the same
//! rule to the same fields, so that a message that parses is a message the store accepts, and one that
//! does not is parked on its own. One rule, here, called by both.

use crate::entity::FieldError;

/// Whether `value` can be part of a store key or an indexed field: any string without a NUL byte. (The
/// store's keys join their parts with NUL, so a NUL inside a part would make two keys ambiguous.)
pub fn storable(value: &str) -> bool {
    !value.as_bytes().contains(&0)
}

/// [`storable`], as the error of an entity's field named as ECS names it.
pub fn check_storable(field: &'static str, value: &str) -> Result<(), FieldError> {
    if storable(value) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            "contains a NUL byte, which blox cannot key or index by",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_the_one_byte_refused() {
        for ok in ["", "svc", "ecs-svc/9223370556150183303", "ünï 🚀", "\u{1}\u{7f}"] {
            assert!(storable(ok), "{ok:?}");
        }
        for bad in ["\0", "a\0", "\0a", "a\0b"] {
            assert!(!storable(bad), "{bad:?}");
        }
        assert_eq!(
            check_storable("startedBy", "a\0b").unwrap_err().to_string(),
            "startedBy: contains a NUL byte, which blox cannot key or index by"
        );
    }
}
