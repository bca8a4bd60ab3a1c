//! Loading the AWS configuration: the standard environment chain (region, credentials,
//! `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_ECS` / `AWS_ENDPOINT_URL_SQS` / `AWS_ENDPOINT_URL_CLOUDWATCH`)
//! on a rustls + ring HTTP client, with retry and timeout settings suited to blox's calls.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_http_client::{Builder, tls};
use thiserror::Error;

/// Attempts per call. The reconciler lists and describes in bursts that ECS throttles, so we retry
/// throttling harder than the SDK's default of 3.
const MAX_ATTEMPTS: u32 = 8;
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Must exceed SQS's longest long poll (20 s) so that an empty receive is not cut off as a timeout.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// All attempts of one call, back-off included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("no AWS region configured: set AWS_REGION (or a region in the AWS profile)")]
    MissingRegion,
}

/// Loads the AWS configuration from the environment. Fails only when no region is configured (the
/// SDK clients would otherwise fail on every call); missing credentials surface on the first call.
pub async fn sdk_config() -> Result<SdkConfig, ConfigError> {
    // Default features of the SDK crates are off (no aws-lc, no legacy hyper), so there is no default
    // HTTP client: build one on rustls with the ring provider.
    let http = Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https();
    let retry = RetryConfig::standard()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(INITIAL_BACKOFF)
        .with_max_backoff(MAX_BACKOFF);
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(retry)
        .timeout_config(timeouts)
        .load()
        .await;
    match config.region() {
        Some(region) => {
            tracing::debug!(region = %region, "loaded AWS configuration");
            Ok(config)
        }
        None => Err(ConfigError::MissingRegion),
    }
}
