//! An HTTP proxy in front of moto's SQS that records what it delivers and what moto deletes, and holds
//! receives back on demand: for tests that must know which messages a process was given and which
//! it acknowledged (deleted), whatever becomes of the process.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;
use tokio::sync::watch;

use crate::moto::Moto;
use crate::proxy::{Front, MAX_BODY, exchange, plain};

/// A message as moto delivered it through the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsMessage {
    pub message_id: String,
    pub body: String,
}

#[derive(Debug, Default)]
struct Record {
    /// Every message delivered (ReceiveMessage), redeliveries included, in order.
    delivered: Vec<SqsMessage>,
    /// Receipt handle → its delivery in `delivered`.
    receipts: HashMap<String, usize>,
    /// Deliveries whose message moto confirmed deleted, in order.
    deleted: Vec<usize>,
    /// Message ids deleted, once each.
    deleted_ids: HashSet<String>,
    /// Deletions of receipt handles the proxy never delivered.
    unknown_deletes: usize,
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    http: reqwest::Client,
    record: Mutex<Record>,
    /// Whether ReceiveMessage requests go through (false: they wait at the proxy).
    receiving: watch::Sender<bool>,
    /// ReceiveMessage requests waiting at the proxy right now.
    held: AtomicUsize,
}

impl Shared {
    fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The proxy, on 127.0.0.1 with an OS-assigned port; stops accepting connections on drop. A process
/// reaches SQS through it with [`SqsProxy::env`]. It understands the SDK's SQS protocol (AWS JSON
/// 1.0: the operation in `X-Amz-Target`): a message counts as deleted once moto has answered a
/// DeleteMessage, or a DeleteMessageBatch entry, with success. Each exchange with moto completes on a
/// task of its own, so that what moto did for a client that died meanwhile (a SIGKILLed blox) is
/// still recorded.
#[derive(Debug)]
pub struct SqsProxy {
    front: Front,
    shared: Arc<Shared>,
}

impl SqsProxy {
    /// Starts a proxy forwarding to `moto`, letting receives through.
    pub async fn start(moto: &Moto) -> anyhow::Result<SqsProxy> {
        let shared = Arc::new(Shared {
            upstream: moto.endpoint(),
            // No proxy from the environment: the upstream is on loopback.
            http: crate::http_client().no_proxy().build()?,
            record: Mutex::default(),
            receiving: watch::Sender::new(true),
            held: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        let front = Front::start(moto, "SQS proxy", app).await?;
        Ok(SqsProxy { front, shared })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.front.url()
    }

    /// [`Moto::env`] with SQS reached through the proxy (`AWS_ENDPOINT_URL_SQS`), every other service
    /// directly: for a child process (blox).
    pub fn env(&self) -> Vec<(String, String)> {
        self.front.env("AWS_ENDPOINT_URL_SQS")
    }

    /// Makes later ReceiveMessage requests wait at the proxy, before moto sees them, until
    /// [`SqsProxy::release_receives`]. Requests already forwarded complete as usual.
    pub fn hold_receives(&self) {
        self.shared.receiving.send_replace(false);
    }

    /// Lets ReceiveMessage requests through again, the held ones first.
    pub fn release_receives(&self) {
        self.shared.receiving.send_replace(true);
    }

    /// ReceiveMessage requests waiting at the proxy right now.
    pub fn held_receives(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// The deliveries from the `from`-th on (every message of every successful ReceiveMessage
    /// answer, in order; a message delivered twice is there twice).
    pub fn deliveries(&self, from: usize) -> Vec<SqsMessage> {
        let record = self.shared.record();
        record.delivered.get(from..).unwrap_or_default().to_vec()
    }

    /// Deliveries so far: [`SqsProxy::deliveries`] from this number on are the later ones.
    pub fn delivery_count(&self) -> usize {
        self.shared.record().delivered.len()
    }

    /// The deletions moto confirmed, from the `from`-th on, in order (a message deleted twice, by
    /// two receipt handles, is there twice).
    pub fn deletions(&self, from: usize) -> Vec<SqsMessage> {
        let record = self.shared.record();
        let later = record.deleted.get(from..).unwrap_or_default();
        later.iter().map(|&i| record.delivered[i].clone()).collect()
    }

    /// Distinct messages (by message id) moto confirmed deleted.
    pub fn deleted_messages(&self) -> usize {
        self.shared.record().deleted_ids.len()
    }

    /// Deletions moto confirmed of receipt handles the proxy never delivered (0 unless a client
    /// also receives from moto directly).
    pub fn unknown_deletes(&self) -> usize {
        self.shared.record().unknown_deletes
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(err) => return plain(StatusCode::BAD_REQUEST, format!("reading the request: {err}")),
    };
    let operation = parts
        .headers
        .get("x-amz-target")
        .and_then(|t| t.to_str().ok())
        .and_then(|t| t.strip_prefix("AmazonSQS."))
        .unwrap_or_default()
        .to_owned();
    if operation == "ReceiveMessage" {
        let mut receiving = shared.receiving.subscribe();
        let _held = Held::count(&shared.held);
        let _ = receiving.wait_for(|open| *open).await;
    }
    // On a task of its own: dropped with a client that went away, the exchange would still have
    // happened at moto but not be recorded.
    let exchanged = tokio::spawn(async move {
        let answer = exchange(&shared.http, &shared.upstream, parts, body.clone()).await;
        if let Ok(answer) = &answer
            && answer.status.is_success()
        {
            observe(&shared, &operation, &body, &answer.body);
        }
        answer
    });
    match exchanged.await {
        Ok(Ok(answer)) => answer.into_response(),
        Ok(Err(failed)) => failed,
        Err(err) => plain(StatusCode::INTERNAL_SERVER_ERROR, format!("proxy task: {err}")),
    }
}

/// A request counted in `held` while it waits, also when its client goes away meanwhile.
struct Held<'a>(&'a AtomicUsize);

impl Held<'_> {
    fn count(held: &AtomicUsize) -> Held<'_> {
        held.fetch_add(1, Ordering::SeqCst);
        Held(held)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Records what a successful exchange delivered or deleted.
fn observe(shared: &Shared, operation: &str, request: &[u8], answer: &[u8]) {
    let json = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).unwrap_or(Value::Null);
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match operation {
        "ReceiveMessage" => {
            let answer = json(answer);
            let mut record = shared.record();
            for m in answer["Messages"].as_array().into_iter().flatten() {
                let index = record.delivered.len();
                record.delivered.push(SqsMessage {
                    message_id: text(&m["MessageId"]),
                    body: text(&m["Body"]),
                });
                record.receipts.insert(text(&m["ReceiptHandle"]), index);
            }
        }
        "DeleteMessage" => {
            let receipt = text(&json(request)["ReceiptHandle"]);
            deleted(&mut shared.record(), &receipt);
        }
        "DeleteMessageBatch" => {
            let (request, answer) = (json(request), json(answer));
            let receipts: HashMap<String, String> = request["Entries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| (text(&e["Id"]), text(&e["ReceiptHandle"])))
                .collect();
            let mut record = shared.record();
            for ok in answer["Successful"].as_array().into_iter().flatten() {
                if let Some(receipt) = receipts.get(&text(&ok["Id"])) {
                    deleted(&mut record, receipt);
                }
            }
        }
        _ => {}
    }
}

fn deleted(record: &mut Record, receipt: &str) {
    match record.receipts.get(receipt).copied() {
        Some(index) => {
            record.deleted.push(index);
            let id = record.delivered[index].message_id.clone();
            record.deleted_ids.insert(id);
        }
        None => record.unknown_deletes += 1,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::EcsFixture;

    #[tokio::test]
    async fn records_deliveries_and_deletions_and_holds_receives() {
        let moto = Moto::start().await.unwrap();
        let direct = EcsFixture::new(&moto).await;
        let url = direct.create_queue("proxied").await.unwrap();
        direct.send_messages(&url, &["a", "b", "c"]).await.unwrap();
        let proxy = SqsProxy::start(&moto).await.unwrap();
        let sqs = aws_sdk_sqs::Client::new(&crate::moto::sdk_config_at(&proxy.url()).await);

        proxy.hold_receives();
        let receive = {
            let (sqs, url) = (sqs.clone(), url.clone());
            tokio::spawn(async move {
                sqs.receive_message()
                    .queue_url(url)
                    .max_number_of_messages(10)
                    .send()
                    .await
                    .unwrap()
            })
        };
        crate::wait_until(
            "the receive waits at the proxy",
            Duration::from_secs(10),
            || async { proxy.held_receives() == 1 },
        )
        .await;
        assert_eq!(
            direct.queue_depth(&url).await.unwrap().visible,
            3,
            "moto delivered nothing"
        );
        assert!(proxy.deliveries(0).is_empty());
        proxy.release_receives();
        let received = receive.await.unwrap();
        let messages = received.messages();
        assert_eq!(messages.len(), 3);
        let bodies: Vec<String> = proxy.deliveries(0).into_iter().map(|m| m.body).collect();
        assert_eq!(bodies, ["a", "b", "c"]);
        assert_eq!(proxy.delivery_count(), 3);
        assert_eq!(proxy.held_receives(), 0);

        let receipt = |i: usize| messages[i].receipt_handle().unwrap().to_owned();
        sqs.delete_message()
            .queue_url(&url)
            .receipt_handle(receipt(1))
            .send()
            .await
            .unwrap();
        let entries = [0, 2].map(|i| {
            aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                .id(format!("e{i}"))
                .receipt_handle(receipt(i))
                .build()
                .unwrap()
        });
        sqs.delete_message_batch()
            .queue_url(&url)
            .set_entries(Some(entries.to_vec()))
            .send()
            .await
            .unwrap();
        let deleted: Vec<String> = proxy.deletions(0).into_iter().map(|m| m.body).collect();
        assert_eq!(deleted, ["b", "a", "c"]);
        assert_eq!(proxy.deletions(2).len(), 1);
        assert_eq!(proxy.deleted_messages(), 3);
        assert_eq!(proxy.unknown_deletes(), 0);
        let depth = direct.queue_depth(&url).await.unwrap();
        assert_eq!((depth.visible, depth.in_flight), (0, 0));
        let env = proxy.env();
        assert!(env.contains(&("AWS_ENDPOINT_URL_SQS".to_owned(), proxy.url())));
    }
}
