//! Helpers for blox's integration tests (a dev-dependency only):
//!
//! - [`Moto`]: a private moto server (ECS, SQS, EC2 emulator) per test, killed on drop;
//! - [`Etcd`]: a private single-member etcd server per test ([`EtcdOptions`]), killed on drop;
//! - [`EcsFixture`]: creates clusters, instances, tasks and queues in it;
//! - [`task_event`], [`instance_event`], [`EventFeed`]: ECS events as EventBridge delivers them, since
//!   moto never emits any;
//! - [`wait_until`]: the one way tests wait for something;
//! - [`BloxProcess`]: runs the blox binary and finds the address it serves on; [`Api`]: JSON requests
//!   to it, `/metrics` samples and v1.0 deployments;
//! - [`StartTaskFaultProxy`]: a proxy in front of moto that fails StartTask calls on demand, before
//!   or after moto acts ([`StartTaskFault`]);
//! - [`SqsProxy`]: a proxy in front of moto's SQS that records what it delivers and what moto deletes,
//!   and holds receives back on demand;
//! - [`Browser`]: a real headless Chromium through a private chromedriver, for the dashboard's tests.

mod api;
mod browser;
pub mod entities;
mod etcd;
mod events;
mod fixture;
mod moto;
mod process;
mod proxy;
mod sqs_proxy;
mod wait;

pub use api::{Api, deployment_id, metric_sum};
pub use browser::Browser;
pub use etcd::{Etcd, EtcdOptions};
pub use events::{EventFeed, instance_event, task_event};
pub use fixture::{EcsFixture, tasks_by_instance};
pub use moto::{Moto, workspace_root};
pub use process::{BloxProcess, Finished, run_to_end};
pub use proxy::{StartTaskFault, StartTaskFaultProxy};
pub use sqs_proxy::{SqsMessage, SqsProxy};
pub use wait::wait_until;

/// A reqwest client builder for tests. The workspace builds reqwest with rustls and no crypto
/// provider (ring is installed as the process's default, as the AWS SDK uses it): a
/// `reqwest::Client` (or `reqwest::get`) before that panics, so tests build theirs here.
pub fn http_client() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// Installs ring as the process's default crypto provider, which reqwest needs before it builds a
/// client. [`http_client`], [`Moto::start`] and [`BloxProcess::start`] call it, so that a test's
/// own `reqwest::get` after either works too.
pub fn install_crypto_provider() {
    // An error means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
