//! An HTTP proxy in front of moto that makes ECS StartTask calls fail on demand: for testing what a
//! caller does when it cannot know whether a StartTask started anything. Every other request (and
//! every StartTask without a fault queued) passes through unchanged. It counts the ECS requests it
//! sees by operation: a process given its own proxy has its ECS calls counted apart.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use aws_config::SdkConfig;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::Response;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::moto::{Moto, sdk_config_at};

/// The `X-Amz-Target` of ECS's StartTask (ECS speaks AWS JSON 1.1: one POST path, the operation in
/// this header).
const START_TASK_TARGET: &str = "AmazonEC2ContainerServiceV20141113.StartTask";
/// API calls are small JSON documents; the cap only stops a runaway test.
pub(crate) const MAX_BODY: usize = 16 << 20;

/// How a StartTask call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTaskFault {
    /// Answered with a 500 without forwarding: ECS never saw the call, nothing started.
    Refuse,
    /// Forwarded to moto, which starts the tasks; its answer is then dropped and the caller gets a
    /// 500, as when an answer is lost on its way back.
    LoseAnswer,
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    http: reqwest::Client,
    start_task_requests: AtomicU64,
    /// Requests by ECS operation (the `X-Amz-Target` after its last dot).
    operations: Mutex<HashMap<String, u64>>,
    faults: Mutex<VecDeque<StartTaskFault>>,
    /// ECS operations answered with AccessDeniedException, as IAM does for a role without them.
    denied: Mutex<Vec<String>>,
}

impl Shared {
    fn faults(&self) -> MutexGuard<'_, VecDeque<StartTaskFault>> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The proxy, on 127.0.0.1 with an OS-assigned port; stops accepting connections on drop (open
/// keep-alive connections finish on their own). Point ECS clients at
/// [`StartTaskFaultProxy::url`] (in process: [`StartTaskFaultProxy::sdk_config`]; a child process:
/// [`StartTaskFaultProxy::env`]), queue faults with [`StartTaskFaultProxy::fail_next_start_tasks`].
#[derive(Debug)]
pub struct StartTaskFaultProxy {
    front: Front,
    shared: Arc<Shared>,
}

/// A proxy's listening side, what every proxy of the test kit shares: on 127.0.0.1 with an
/// OS-assigned port, serving its router until dropped (open keep-alive connections finish on their
/// own).
#[derive(Debug)]
pub(crate) struct Front {
    addr: SocketAddr,
    moto_env: Vec<(String, String)>,
    server: JoinHandle<()>,
}

impl Front {
    /// Serves `app` in front of `moto`; `name` is the proxy's, in errors.
    pub(crate) async fn start(moto: &Moto, name: &'static str, app: axum::Router) -> anyhow::Result<Front> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .with_context(|| format!("binding the {name}"))?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("[{name}] stopped: {err}");
            }
        });
        Ok(Front {
            addr,
            moto_env: moto.env(),
            server,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// [`Moto::env`] with one service reached through the proxy (`variable`, its
    /// `AWS_ENDPOINT_URL_*`), every other directly: for a child process (blox).
    pub(crate) fn env(&self, variable: &str) -> Vec<(String, String)> {
        let mut env = self.moto_env.clone();
        env.push((variable.to_owned(), self.url()));
        env
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl StartTaskFaultProxy {
    /// Starts a proxy forwarding to `moto`.
    pub async fn start(moto: &Moto) -> anyhow::Result<StartTaskFaultProxy> {
        let shared = Arc::new(Shared {
            upstream: moto.endpoint(),
            // No proxy from the environment: the upstream is on loopback.
            http: crate::http_client().no_proxy().build()?,
            start_task_requests: AtomicU64::new(0),
            operations: Mutex::default(),
            faults: Mutex::new(VecDeque::new()),
            denied: Mutex::default(),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        let front = Front::start(moto, "StartTask fault proxy", app).await?;
        Ok(StartTaskFaultProxy { front, shared })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.front.url()
    }

    /// StartTask requests received so far, failed ones included.
    pub fn start_task_requests(&self) -> u64 {
        self.shared.start_task_requests.load(Ordering::SeqCst)
    }

    /// Requests of one ECS operation (`StartTask`, `StopTask`, `ListTasks`...) received so far.
    pub fn requests(&self, operation: &str) -> u64 {
        let operations = self.shared.operations.lock().unwrap_or_else(|p| p.into_inner());
        operations.get(operation).copied().unwrap_or(0)
    }

    /// Requests received so far, by ECS operation.
    pub fn operations(&self) -> std::collections::BTreeMap<String, u64> {
        let operations = self.shared.operations.lock().unwrap_or_else(|p| p.into_inner());
        operations.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Makes the next `n` StartTask requests fail with `fault` (after any faults already queued).
    pub fn fail_next_start_tasks(&self, n: usize, fault: StartTaskFault) {
        self.shared.faults().extend(std::iter::repeat_n(fault, n));
    }

    /// Answers every later `operation` request (`StartTask`, `ListTasks`...) with
    /// AccessDeniedException, as ECS does for a role that is not allowed it.
    pub fn deny(&self, operation: &str) {
        let mut denied = self.shared.denied.lock().unwrap_or_else(|p| p.into_inner());
        denied.push(operation.to_owned());
    }

    /// Faults queued and not yet used by a StartTask request.
    pub fn faults_left(&self) -> usize {
        self.shared.faults().len()
    }

    /// [`Moto::env`] with ECS reached through the proxy (`AWS_ENDPOINT_URL_ECS`), every other
    /// service directly: for a child process (blox).
    pub fn env(&self) -> Vec<(String, String)> {
        self.front.env("AWS_ENDPOINT_URL_ECS")
    }

    /// [`Moto::sdk_config`] with every service reached through the proxy.
    pub async fn sdk_config(&self) -> SdkConfig {
        sdk_config_at(&self.url()).await
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(err) => return plain(StatusCode::BAD_REQUEST, format!("reading the request: {err}")),
    };
    let target = parts.headers.get("x-amz-target").and_then(|t| t.to_str().ok());
    if let Some(operation) = target.and_then(|t| t.rsplit('.').next()) {
        let mut operations = shared.operations.lock().unwrap_or_else(|p| p.into_inner());
        *operations.entry(operation.to_owned()).or_default() += 1;
        let denied = shared.denied.lock().unwrap_or_else(|p| p.into_inner());
        if denied.iter().any(|d| d == operation) {
            return error_answer(
                StatusCode::BAD_REQUEST,
                "AccessDeniedException",
                &format!("User is not authorized to perform: ecs:{operation}"),
            );
        }
    }
    let is_start_task = target == Some(START_TASK_TARGET);
    let fault = if is_start_task {
        shared.start_task_requests.fetch_add(1, Ordering::SeqCst);
        shared.faults().pop_front()
    } else {
        None
    };
    match fault {
        Some(StartTaskFault::Refuse) => server_exception("StartTask refused before reaching ECS"),
        Some(StartTaskFault::LoseAnswer) => {
            // moto has acted once it answers; only then is the answer lost.
            let _ = upstream(&shared, parts, body).await;
            server_exception("StartTask answer lost after ECS acted")
        }
        None => upstream(&shared, parts, body).await,
    }
}

/// Connection-level headers are the proxy's own, and the body is re-framed.
fn hop_by_hop(name: &HeaderName) -> bool {
    [
        header::HOST,
        header::CONNECTION,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

async fn upstream(shared: &Shared, parts: Parts, body: Bytes) -> Response {
    match exchange(&shared.http, &shared.upstream, parts, body).await {
        Ok(answer) => answer.into_response(),
        Err(failed) => failed,
    }
}

/// The upstream's answer to a forwarded request, read whole.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    pub(crate) fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        for (name, value) in self.headers.iter().filter(|(name, _)| !hop_by_hop(name)) {
            response.headers_mut().append(name, value.clone());
        }
        response
    }
}

/// Forwards a request as it came to `upstream` (`http://HOST:PORT`) and reads the whole answer; a 502
/// when the upstream cannot be reached.
pub(crate) async fn exchange(
    http: &reqwest::Client,
    upstream: &str,
    parts: Parts,
    body: Bytes,
) -> Result<Answer, Response> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = http.request(parts.method, format!("{upstream}{path}")).body(body);
    for (name, value) in parts.headers.iter().filter(|(name, _)| !hop_by_hop(name)) {
        request = request.header(name, value);
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(err) => return Err(plain(StatusCode::BAD_GATEWAY, format!("upstream: {err}"))),
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    match answer.bytes().await {
        Ok(body) => Ok(Answer {
            status,
            headers,
            body,
        }),
        Err(err) => Err(plain(StatusCode::BAD_GATEWAY, format!("upstream body: {err}"))),
    }
}

/// ECS's answer to an internal failure (AWS JSON 1.1): the SDK sees `ServerException`, a transient
/// error its retry policy would retry.
fn server_exception(message: &str) -> Response {
    error_answer(StatusCode::INTERNAL_SERVER_ERROR, "ServerException", message)
}

/// An ECS error answer (AWS JSON 1.1).
fn error_answer(status: StatusCode, code: &'static str, message: &str) -> Response {
    let body = serde_json::json!({"__type": code, "message": message}).to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    headers.insert("x-amzn-errortype", header::HeaderValue::from_static(code));
    response
}

pub(crate) fn plain(status: StatusCode, message: String) -> Response {
    let mut response = Response::new(Body::from(message));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use aws_sdk_ecs::config::retry::RetryConfig;

    use super::*;
    use crate::EcsFixture;

    #[tokio::test]
    async fn start_task_faults_refuse_or_lose_the_answer_and_the_rest_passes_through() {
        let moto = Moto::start().await.unwrap();
        let direct = EcsFixture::new(&moto).await;
        let proxy = StartTaskFaultProxy::start(&moto).await.unwrap();
        // Without the SDK's retries, so that one call is one request.
        let once = aws_sdk_ecs::config::Builder::from(&proxy.sdk_config().await)
            .retry_config(RetryConfig::disabled())
            .build();
        let ecs = aws_sdk_ecs::Client::from_conf(once);
        // Set up through the proxy: other calls pass through.
        ecs.create_cluster().cluster_name("proxied").send().await.unwrap();
        let definition = direct.register_task_definition("proxied").await.unwrap();
        let instances = direct.register_instances("proxied", 1).await.unwrap();
        let start = |started_by: &'static str| {
            ecs.start_task()
                .cluster("proxied")
                .task_definition(&definition)
                .set_container_instances(Some(instances.clone()))
                .started_by(started_by)
                .send()
        };
        let started_by = |who: &str| {
            let ecs = direct.ecs.clone();
            let who = who.to_owned();
            async move {
                ecs.list_tasks()
                    .cluster("proxied")
                    .started_by(who)
                    .send()
                    .await
                    .unwrap()
                    .task_arns()
                    .len()
            }
        };

        proxy.fail_next_start_tasks(1, StartTaskFault::Refuse);
        proxy.fail_next_start_tasks(1, StartTaskFault::LoseAnswer);
        assert_eq!(proxy.faults_left(), 2);
        let refused = start("refused").await.unwrap_err();
        assert_eq!(
            aws_sdk_ecs::error::ProvideErrorMetadata::code(&refused),
            Some("ServerException")
        );
        assert_eq!(started_by("refused").await, 0, "never reached moto");
        let lost = start("lost").await.unwrap_err();
        assert_eq!(
            aws_sdk_ecs::error::ProvideErrorMetadata::code(&lost),
            Some("ServerException")
        );
        assert_eq!(started_by("lost").await, 1, "moto started it");
        assert_eq!(proxy.faults_left(), 0);
        let fine = start("fine").await.unwrap();
        assert_eq!(fine.tasks().len(), 1);
        assert_eq!(proxy.start_task_requests(), 3);
        assert_eq!(proxy.requests("StartTask"), 3);
        assert_eq!(proxy.requests("CreateCluster"), 1);
        assert_eq!(proxy.requests("StopTask"), 0);
        assert_eq!(proxy.operations().get("StartTask"), Some(&3));

        let env = proxy.env();
        assert!(env.contains(&("AWS_ENDPOINT_URL_ECS".to_owned(), proxy.url())));
        assert!(env.contains(&("AWS_ENDPOINT_URL".to_owned(), moto.endpoint())));
        let url = proxy.url();
        drop(proxy);
        wait_closed(&url).await;
    }

    async fn wait_closed(url: &str) {
        let url = url.to_owned();
        crate::wait_until(
            "the proxy stops serving",
            std::time::Duration::from_secs(5),
            || {
                let url = url.clone();
                async move { reqwest::get(&url).await.is_err() }
            },
        )
        .await;
    }
}
