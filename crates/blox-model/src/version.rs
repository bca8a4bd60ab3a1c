//! The ordering rule. ECS increments a resource's `version` on every change and repeats it on duplicate
//! events, so a description replaces what is stored only when its version is higher. A version of 0
//! means "ECS did not say" (moto never does): such a description replaces another unversioned one when
//! its content differs (it is newer information from a Describe), and never a versioned one.

/// Whether an incoming description (`incoming` version) replaces the stored one. `stored` is the
/// version of the stored entity or of its deletion, `None` when nothing is known.
pub fn supersedes(stored: Option<u64>, incoming: u64, identical: bool) -> bool {
    match stored {
        None => true,
        Some(stored) => incoming > stored || (incoming == 0 && stored == 0 && !identical),
    }
}

#[cfg(test)]
mod tests {
    use super::supersedes;

    #[test]
    fn rule() {
        let cases = [
            // (stored, incoming, identical, applies)
            (None, 0, false, true),
            (None, 7, false, true),
            (Some(3), 4, false, true),
            (Some(3), 3, false, false),
            (Some(3), 3, true, false),
            (Some(3), 2, false, false),
            (Some(3), 0, false, false),
            (Some(0), 1, false, true),
            (Some(0), 0, false, true),
            (Some(0), 0, true, false),
        ];
        for (stored, incoming, identical, applies) in cases {
            assert_eq!(
                supersedes(stored, incoming, identical),
                applies,
                "{stored:?} {incoming} {identical}"
            );
        }
    }
}
