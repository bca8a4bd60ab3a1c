//! Writes API bodies by splicing stored entity JSON into the v0.3 envelopes, so that serving a list or
//! a stream never parses and re-serialises entities. `tests::splice_matches_serde` keeps the output
//! identical to serialising `blox_api` types.

/// `{"metadata":{"entityVersion":"SEQ"},"entity":BODY}`: one entity of a listing or a stream, as the
/// store writes a listing's (`Store::list_spliced`) and [`record`] writes one.
pub const RECORD: blox_store::Splice = blox_store::Splice {
    before: b"{\"metadata\":{\"entityVersion\":\"",
    middle: b"\"},\"entity\":",
    after: b"}",
    separator: b",",
    lead: false,
};

/// [`RECORD`] of a deletion: `{"metadata":{"entityVersion":"SEQ","deleted":true},"entity":BODY}`.
const DELETED_RECORD: blox_store::Splice = blox_store::Splice {
    middle: b"\",\"deleted\":true},\"entity\":",
    ..RECORD
};

/// Appends one entity's record.
pub fn record(out: &mut Vec<u8>, seq: u64, deleted: bool, body: &[u8]) {
    let splice = if deleted { DELETED_RECORD } else { RECORD };
    // Writing into a Vec cannot fail.
    let _ = splice.write(out, 0, seq, |out| {
        out.extend_from_slice(body);
        Ok(())
    });
}

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
                String::from_utf8(expected.clone()).unwrap()
            );
            // As the store splices a listing: the separators are the splice's, the first page's
            // items and a later page's (`lead`) alike.
            if !deleted {
                let mut out = LIST_START.to_vec();
                for (i, item) in items.iter().enumerate() {
                    let splice = blox_store::Splice {
                        lead: i > 0,
                        ..RECORD
                    };
                    let body = serde_json::to_vec(&item.entity).unwrap();
                    splice
                        .write(&mut out, 0, (i as u64 + 1) * 10, |out| {
                            out.extend_from_slice(&body);
                            Ok(())
                        })
                        .unwrap();
                }
                list_end(&mut out, next);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    String::from_utf8(expected).unwrap()
                );
            }
        }
    }
}
