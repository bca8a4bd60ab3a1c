//! [`EventSource`] on an SQS queue through the AWS SDK.

use std::collections::HashSet;

use futures::StreamExt as _;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::operation::get_queue_url::GetQueueUrlError;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName};

use crate::{EventSource, Message, QueueDepth, SourceError};

/// SQS's limit on messages per receive and entries per batch call.
const SQS_BATCH: usize = 10;
/// SQS's longest long poll.
const MAX_WAIT_SECONDS: i32 = 20;
/// SQS's longest visibility timeout (12 hours).
const MAX_VISIBILITY_SECONDS: i32 = 43_200;

/// How [`SqsSource`] receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqsOptions {
    /// Long-poll wait of each receive, 0 to 20 seconds.
    pub wait_time_seconds: i32,
    /// How long a received message stays hidden before SQS redelivers it, 0 to 43200 seconds. It must
    /// cover applying and committing a batch, or messages are redelivered (harmlessly, but wastefully).
    pub visibility_timeout_seconds: i32,
}

impl Default for SqsOptions {
    fn default() -> Self {
        SqsOptions {
            wait_time_seconds: MAX_WAIT_SECONDS,
            visibility_timeout_seconds: 60,
        }
    }
}

/// An SQS queue of ECS events.
#[derive(Debug, Clone)]
pub struct SqsSource {
    client: Client,
    queue_url: String,
    options: SqsOptions,
}

impl SqsSource {
    /// Opens the queue named by `queue`: a queue URL (`http://` or `https://`), used as is, or a queue
    /// name, resolved with GetQueueUrl (which also checks that the queue exists).
    pub async fn new(config: &SdkConfig, queue: &str, options: SqsOptions) -> Result<SqsSource, SourceError> {
        const OP: &str = "open";
        if !(0..=MAX_WAIT_SECONDS).contains(&options.wait_time_seconds) {
            return Err(SourceError {
                operation: OP,
                message: format!("wait time {} s is outside 0..=20 s", options.wait_time_seconds),
            });
        }
        if !(0..=MAX_VISIBILITY_SECONDS).contains(&options.visibility_timeout_seconds) {
            return Err(SourceError {
                operation: OP,
                message: format!(
                    "visibility timeout {} s is outside 0..=43200 s",
                    options.visibility_timeout_seconds
                ),
            });
        }
        let client = Client::new(config);
        let queue_url = queue_url(&client, queue)
            .await
            .map_err(|e| source_error("GetQueueUrl", e))?
            .ok_or_else(|| SourceError {
                operation: "GetQueueUrl",
                message: format!("no URL returned for queue {queue:?}"),
            })?;
        tracing::info!(queue, queue_url = %queue_url, "opened SQS event source");
        Ok(SqsSource {
            client,
            queue_url,
            options,
        })
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }
}

#[async_trait]
impl EventSource for SqsSource {
    async fn receive(&self, max: usize) -> Result<Vec<Message>, SourceError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let count = i32::try_from(max.min(SQS_BATCH)).unwrap_or(1);
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(count)
            .wait_time_seconds(self.options.wait_time_seconds)
            .visibility_timeout(self.options.visibility_timeout_seconds)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| source_error("ReceiveMessage", e))?;
        let mut messages = Vec::with_capacity(out.messages().len());
        for m in out.messages() {
            // A message without id or receipt could never be deleted; SQS always sends both.
            let (Some(id), Some(receipt)) = (m.message_id(), m.receipt_handle()) else {
                tracing::warn!(queue_url = %self.queue_url, "received a message without id or receipt handle");
                continue;
            };
            let sent_at_ms = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                .and_then(|v| v.parse::<u64>().ok());
            messages.push(Message {
                id: id.to_owned(),
                receipt: receipt.to_owned(),
                body: m.body().unwrap_or_default().to_owned(),
                sent_at_ms,
            });
        }
        tracing::debug!(queue_url = %self.queue_url, asked = max, received = messages.len(), "received messages");
        Ok(messages)
    }

    async fn delete(&self, receipts: &[String]) -> Result<Vec<String>, SourceError> {
        // A receipt given twice in one batch is an error for some SQS implementations and deleting it
        // once is enough.
        let mut seen = HashSet::with_capacity(receipts.len());
        let unique: Vec<String> = receipts
            .iter()
            .filter(|r| seen.insert(r.as_str()))
            .cloned()
            .collect();
        // Batches go out concurrently: a large commit should not wait for its deletes one by one.
        // (Owned chunks: borrowed ones defeat the compiler's lifetime inference for async_trait.)
        let chunks: Vec<Vec<String>> = unique.chunks(SQS_BATCH).map(<[String]>::to_vec).collect();
        let results: Vec<Result<Vec<String>, SourceError>> = futures::stream::iter(chunks)
            .map(|chunk| async move { self.delete_batch(&chunk).await })
            .buffer_unordered(DELETES_IN_FLIGHT)
            .collect()
            .await;
        let mut failed = Vec::new();
        for result in results {
            failed.extend(result?);
        }
        tracing::debug!(queue_url = %self.queue_url, deleted = unique.len() - failed.len(), failed = failed.len(), "deleted messages");
        Ok(failed)
    }

    async fn depth(&self) -> Result<QueueDepth, SourceError> {
        const OP: &str = "GetQueueAttributes";
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| source_error(OP, e))?;
        let count = |name: QueueAttributeName| -> Result<u64, SourceError> {
            let value = out.attributes().and_then(|a| a.get(&name));
            match value {
                None => Ok(0),
                Some(v) => v.parse().map_err(|_| SourceError {
                    operation: OP,
                    message: format!("{} is not a count: {v:?}", name.as_str()),
                }),
            }
        };
        Ok(QueueDepth {
            visible: count(QueueAttributeName::ApproximateNumberOfMessages)?,
            in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)?,
        })
    }
}

/// The URL of a queue given by name (GetQueueUrl) or by URL (taken as it is); `None` when SQS
/// answered without one.
pub(crate) async fn queue_url(
    client: &Client,
    queue: &str,
) -> Result<Option<String>, SdkError<GetQueueUrlError>> {
    if queue.starts_with("http://") || queue.starts_with("https://") {
        return Ok(Some(queue.to_owned()));
    }
    let out = client.get_queue_url().queue_name(queue).send().await?;
    Ok(out.queue_url().filter(|url| !url.is_empty()).map(str::to_owned))
}

fn source_error<E, R>(operation: &'static str, err: SdkError<E, R>) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let message = match err.code() {
        Some(code) => format!("{code}: {}", err.message().unwrap_or("no message")),
        // Transport errors and timeouts carry no code; keep the whole source chain.
        None => DisplayErrorContext(&err).to_string(),
    };
    SourceError { operation, message }
}

/// DeleteMessageBatch calls in flight at once.
const DELETES_IN_FLIGHT: usize = 8;

impl SqsSource {
    /// One DeleteMessageBatch of at most 10; returns the receipts SQS did not delete.
    async fn delete_batch(&self, chunk: &[String]) -> Result<Vec<String>, SourceError> {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, receipt)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SourceError {
                operation: "DeleteMessageBatch",
                message: e.to_string(),
            })?;
        let out = self
            .client
            .delete_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| source_error("DeleteMessageBatch", e))?;
        let mut failed = Vec::new();
        for entry in out.failed() {
            match entry.id().parse::<usize>().ok().and_then(|i| chunk.get(i)) {
                Some(receipt) => {
                    tracing::warn!(
                        queue_url = %self.queue_url,
                        code = entry.code(),
                        message = entry.message(),
                        "SQS did not delete a message"
                    );
                    failed.push(receipt.clone());
                }
                None => tracing::warn!(
                    id = entry.id(),
                    "SQS reported a failure for an id we did not send"
                ),
            }
        }
        Ok(failed)
    }
}
