//! Writes API bodies by splicing stored entity JSON into the v0.3 envelopes, so that serving a list or
//! a stream never parses and re-serialises entities. `tests::splice_matches_serde` keeps the output
//! identical to serialising `blox_api` types.

use std::io::Write as _;

/// Appends `{"metadata":{"entityVersion":"SEQ"[,"deleted":true]},"entity":BODY}`.
pub fn record(out: &mut Vec<u8>, seq: u64, deleted: bool, body: &[u8]) {
    out.extend_from_slice(b"{\"metadata\":{\"entityVersion\":\"");
    let _ = write!(out, "{seq}");
    out.extend_from_slice(if deleted {
        b"\",\"deleted\":true},\"entity\":"
    } else {
        b"\"},\"entity\":"
    });
    out.extend_from_slice(body);
    out.push(b'}');
}

/// [`record`] (not deleted) as the store writes a listing's entities (`Store::list_spliced`).
pub const RECORD: blox_store::Splice = blox_store::Splice {
    before: b"{\"metadata\":{\"entityVersion\":\"",
    middle: b"\"},\"entity\":",
    after: b"}",
    separator: b",",
    lead: false,
};

/// The opening of a list body.
pub const LIST_START: &[u8] = b"{\"items\":[";

/// The end of a list body, with the token for the next page when there is one.
pub fn list_end(out: &mut Vec<u8>, next_token: Option<&str>) {
    out.push(b']');
    if let Some(token) = next_token {
        out.extend_from_slice(b",\"nextToken\":");
        // Tokens are base64url: no character needs escaping, but serde keeps that obviously true.
        out.extend_from_slice(&serde_json::to_vec(token).unwrap_or_default());
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use blox_api::{Metadata, TaskRecord, Tasks};
    use blox_model::{Overrides, Task};

    fn task(n: u64) -> Task {
        Task {
            cluster_arn: "arn:aws:ecs:us-east-1:123456789012:cluster/c".into(),
            container_instance_arn: None,
            containers: vec![],
            created_at: None,
            desired_status: "RUNNING".into(),
            last_status: "PENDING".into(),
            overrides: Overrides::default(),
            task_arn: format!("arn:aws:ecs:us-east-1:123456789012:task/c/{n}"),
            task_definition_arn: "arn:aws:ecs:us-east-1:123456789012:task-definition/x:1".into(),
            started_at: None,
            started_by: Some("me \"quoted\"".into()),
            stopped_at: None,
            stopped_reason: None,
            group: None,
            launch_type: None,
            version: n,
            updated_at: None,
            health_status: None,
        }
    }

    /// The store's splice of a listing writes what [`record`] does.
    #[test]
    fn store_splice_matches_record() {
        for (index, lead) in [(0, false), (1, false), (0, true)] {
            let mut spliced = Vec::new();
            RECORD
                .write(&mut spliced, index, 42, |out| {
                    out.extend_from_slice(b"{\"a\":1}");
                    Ok(())
                })
                .unwrap();
            let mut expected = if index > 0 || lead {
                b",".to_vec()
            } else {
                Vec::new()
            };
            let splice = blox_store::Splice { lead, ..RECORD };
            if lead {
                spliced.clear();
                splice
                    .write(&mut spliced, index, 42, |out| {
                        out.extend_from_slice(b"{\"a\":1}");
                        Ok(())
                    })
                    .unwrap();
            }
            record(&mut expected, 42, false, b"{\"a\":1}");
            assert_eq!(spliced, expected);
        }
    }

    #[test]
    fn splice_matches_serde() {
        for (deleted, next) in [(false, None), (true, Some("AAEC_-")), (false, Some("x"))] {
            let items: Vec<TaskRecord> = (1..=2)
                .map(|n| TaskRecord {
                    metadata: Metadata {
                        entity_version: (n * 10).to_string(),
                        deleted,
                    },
                    entity: task(n),
                })
                .collect();
            let expected = serde_json::to_vec(&Tasks {
                items: items.clone(),
                next_token: next.map(String::from),
            })
            .unwrap();
            let mut out = LIST_START.to_vec();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                record(
                    &mut out,
                    (i as u64 + 1) * 10,
                    deleted,
                    &serde_json::to_vec(&item.entity).unwrap(),
                );
            }
            list_end(&mut out, next);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }
}
