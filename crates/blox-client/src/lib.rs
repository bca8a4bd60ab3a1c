//! A typed client of the blox REST API.

pub mod table;

use blox_api::{
    CreateEnvironment, CreateEnvironmentRequest, DeadLetters, DeleteEnvironmentResponse, Deployment,
    DeploymentList, DeploymentPlan, DeploymentResponse, Deployments, Environment, EnvironmentList,
    EnvironmentResponse, Environments, ErrorBody, InstanceQuery, InstanceRecord, Instances, PageQuery,
    Readiness, RevisionCreated, RevisionId, RevisionList, RevisionResponse, RollbackRequest, StreamQuery,
    TaskQuery, TaskRecord, Tasks, UpdateEnvironment, UpdateEnvironmentRequest,
};
use bytes::{Buf as _, BytesMut};
use futures::{Stream, StreamExt as _};
use serde::de::DeserializeOwned;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach blox at {endpoint}")]
    Transport {
        endpoint: String,
        source: reqwest::Error,
    },
    /// The server answered with an error body: its message, then what a script or a search needs.
    #[error(
        "{} (code {}{}, HTTP {status})",
        body.message,
        body.code,
        body.field.as_deref().map(|f| format!(", field {f}")).unwrap_or_default()
    )]
    Api { status: u16, body: ErrorBody },
    #[error("unexpected answer ({status}): {message}")]
    Unexpected { status: u16, message: String },
    /// A stream ended with an error line.
    #[error("stream ended: {} ({})", .0.message, .0.code)]
    Stream(ErrorBody),
    /// The client could not be set up (its token or CA certificate).
    #[error("{0}")]
    Setup(String),
}

/// How a [`Client`] authenticates and whom it trusts.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// Sent as `Authorization: Bearer TOKEN` on every request.
    pub token: Option<String>,
    /// PEM certificates: with them, an `https://` endpoint is trusted only if its certificate chains
    /// to one of these (curl's `--cacert`); without them, to the system's roots.
    pub ca_certs_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_certs_pem", &self.ca_certs_pem.as_ref().map(Vec::len))
            .finish()
    }
}

/// reqwest is built with rustls and no crypto provider (the workspace uses ring, like the AWS SDK,
/// instead of reqwest's aws-lc): installs ring as the process's default provider, once. Every
/// `reqwest::Client` of a process that links this crate must be built after this (reqwest panics
/// otherwise); [`Client`] calls it itself.
pub fn install_crypto_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // An error means another provider is the default already, which does as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[derive(Debug, Clone)]
pub struct Client {
    endpoint: String,
    http: reqwest::Client,
}

/// The `Authorization: Bearer TOKEN` header of a client that sends `token` with every request.
pub fn bearer(token: &str) -> Result<reqwest::header::HeaderMap, ClientError> {
    let mut value =
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
            ClientError::Setup(
                "the token holds a character an HTTP header cannot carry (visible ASCII only)".into(),
            )
        })?;
    // Kept out of reqwest's debug output.
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(headers)
}

impl Client {
    /// A client without a token, trusting the system's roots for `https://`.
    pub fn new(endpoint: impl Into<String>) -> Client {
        install_crypto_provider();
        Client {
            endpoint: endpoint.into().trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// A client with a token and/or CA certificates.
    pub fn with_options(endpoint: impl Into<String>, options: &ClientOptions) -> Result<Client, ClientError> {
        install_crypto_provider();
        let mut builder = reqwest::Client::builder();
        if let Some(token) = &options.token {
            builder = builder.default_headers(bearer(token)?);
        }
        if let Some(pem) = &options.ca_certs_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ClientError::Setup(format!("the CA certificate is not usable PEM: {e}")))?;
            if certs.is_empty() {
                return Err(ClientError::Setup(
                    "the CA certificate file holds no PEM certificate".into(),
                ));
            }
            builder = builder.tls_certs_only(certs);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Setup(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client {
            endpoint: endpoint.into().trim_end_matches('/').to_owned(),
            http,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub async fn list_tasks(&self, query: &TaskQuery) -> Result<Tasks, ClientError> {
        self.get_json("/v1/tasks", query).await
    }

    pub async fn get_task(&self, cluster: &str, arn: &str) -> Result<TaskRecord, ClientError> {
        self.get_json(&format!("/v1/tasks/{}/{}", encode(cluster), encode(arn)), &())
            .await
    }

    pub async fn list_instances(&self, query: &InstanceQuery) -> Result<Instances, ClientError> {
        self.get_json("/v1/instances", query).await
    }

    pub async fn get_instance(&self, cluster: &str, arn: &str) -> Result<InstanceRecord, ClientError> {
        self.get_json(&format!("/v1/instances/{}/{}", encode(cluster), encode(arn)), &())
            .await
    }

    pub async fn dead_letters(&self, query: &PageQuery) -> Result<DeadLetters, ClientError> {
        self.get_json("/v1/dead-letters", query).await
    }

    pub async fn readiness(&self) -> Result<Readiness, ClientError> {
        let response = self.send(self.http.get(self.url("/readyz"))).await?;
        let status = response.status().as_u16();
        response.json().await.map_err(|e| ClientError::Unexpected {
            status,
            message: e.to_string(),
        })
    }

    /// Task changes, replayed from `entityVersion` (inclusive) and then live. Ends on an error line
    /// or when the server closes the connection.
    pub async fn stream_tasks(
        &self,
        query: &StreamQuery,
    ) -> Result<impl Stream<Item = Result<TaskRecord, ClientError>> + use<>, ClientError> {
        self.stream("/v1/stream/tasks", query).await
    }

    pub async fn stream_instances(
        &self,
        query: &StreamQuery,
    ) -> Result<impl Stream<Item = Result<InstanceRecord, ClientError>> + use<>, ClientError> {
        self.stream("/v1/stream/instances", query).await
    }

    /// `GET /v1/ping`: `Ok` when the server answers 200 (with an empty body, as v0.3's did).
    pub async fn ping(&self) -> Result<(), ClientError> {
        check(self.send(self.http.get(self.url("/v1/ping"))).await?).await?;
        Ok(())
    }

    /// `POST /v1/environments`.
    pub async fn create_environment(
        &self,
        request: &CreateEnvironmentRequest,
    ) -> Result<Environment, ClientError> {
        self.read_json(self.http.post(self.url("/v1/environments")).json(request))
            .await
    }

    /// `GET /v1/environments`, optionally of one cluster.
    pub async fn list_environments(&self, cluster: Option<&str>) -> Result<Environments, ClientError> {
        let query: Vec<(&str, &str)> = cluster.map(|c| ("cluster", c)).into_iter().collect();
        self.get_json("/v1/environments", &query).await
    }

    /// `GET /v1/environments/{name}`.
    pub async fn get_environment(&self, name: &str) -> Result<Environment, ClientError> {
        self.get_json(&format!("/v1/environments/{}", encode(name)), &())
            .await
    }

    /// `PUT /v1/environments/{name}`: a new revision (and deploymentToken) made of the latest one and
    /// the fields given.
    pub async fn update_environment(
        &self,
        name: &str,
        request: &UpdateEnvironmentRequest,
    ) -> Result<Environment, ClientError> {
        let url = self.url(&format!("/v1/environments/{}", encode(name)));
        self.read_json(self.http.put(url).json(request)).await
    }

    /// `DELETE /v1/environments/{name}?terminateTasks=`.
    pub async fn delete_environment(
        &self,
        name: &str,
        terminate_tasks: bool,
    ) -> Result<DeleteEnvironmentResponse, ClientError> {
        let url = self.url(&format!("/v1/environments/{}", encode(name)));
        let flag = if terminate_tasks { "true" } else { "false" };
        self.read_json(self.http.delete(url).query(&[("terminateTasks", flag)]))
            .await
    }

    /// `POST /v1/environments/{name}/deployments?deploymentToken=`.
    pub async fn create_deployment(&self, environment: &str, token: &str) -> Result<Deployment, ClientError> {
        let url = self.url(&format!("/v1/environments/{}/deployments", encode(environment)));
        self.read_json(self.http.post(url).query(&[("deploymentToken", token)]))
            .await
    }

    /// `GET /v1/environments/{name}/deployments`, newest first.
    pub async fn list_deployments(&self, environment: &str) -> Result<Deployments, ClientError> {
        self.get_json(
            &format!("/v1/environments/{}/deployments", encode(environment)),
            &(),
        )
        .await
    }

    /// `GET /v1/environments/{name}/deployments/{id}`.
    pub async fn get_deployment(&self, environment: &str, id: &str) -> Result<Deployment, ClientError> {
        self.get_json(
            &format!(
                "/v1/environments/{}/deployments/{}",
                encode(environment),
                encode(id)
            ),
            &(),
        )
        .await
    }

    /// The Blox v1.0 environment API (`/v1/{cluster}/environments`).
    pub fn v1(&self) -> V1<'_> {
        V1 { client: self }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        request.send().await.map_err(|source| ClientError::Transport {
            endpoint: self.endpoint.clone(),
            source,
        })
    }

    async fn read_json<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = check(self.send(request).await?).await?;
        let status = response.status().as_u16();
        response.json().await.map_err(|e| ClientError::Unexpected {
            status,
            message: e.to_string(),
        })
    }

    async fn get_json<Q: serde::Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<T, ClientError> {
        let response = self.send(self.http.get(self.url(path)).query(query)).await?;
        let response = check(response).await?;
        let status = response.status().as_u16();
        response.json().await.map_err(|e| ClientError::Unexpected {
            status,
            message: e.to_string(),
        })
    }

    async fn stream<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &StreamQuery,
    ) -> Result<impl Stream<Item = Result<T, ClientError>> + use<T>, ClientError> {
        let response = check(self.send(self.http.get(self.url(path)).query(query)).await?).await?;
        let endpoint = self.endpoint.clone();
        let chunks = response.bytes_stream();
        let lines = futures::stream::unfold(
            (chunks, BytesMut::new(), false),
            move |(mut chunks, mut buffer, mut done)| {
                let endpoint = endpoint.clone();
                async move {
                    loop {
                        if done {
                            return None;
                        }
                        if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                            let line = buffer.split_to(end + 1);
                            let line = &line[..end];
                            // Empty lines are the server's heartbeats, and so are position lines
                            // (`heartbeat=position`).
                            if line.iter().all(u8::is_ascii_whitespace)
                                || serde_json::from_slice::<blox_api::StreamHeartbeat>(line).is_ok()
                            {
                                continue;
                            }
                            let item = parse_line::<T>(line);
                            if item.is_err() {
                                done = true;
                            }
                            return Some((item, (chunks, buffer, done)));
                        }
                        match chunks.next().await {
                            Some(Ok(bytes)) => buffer.extend_from_slice(bytes.chunk()),
                            Some(Err(source)) => {
                                done = true;
                                return Some((
                                    Err(ClientError::Transport {
                                        endpoint: endpoint.clone(),
                                        source,
                                    }),
                                    (chunks, buffer, done),
                                ));
                            }
                            None => return None,
                        }
                    }
                }
            },
        );
        Ok(lines)
    }
}

/// Blox v1.0's environment API: every path names the cluster (a name, or its ARN for a cluster named
/// like a static segment such as `tasks`) and the environment.
#[derive(Debug, Clone, Copy)]
pub struct V1<'a> {
    client: &'a Client,
}

impl V1<'_> {
    fn environments(cluster: &str) -> String {
        format!("/v1/{}/environments", encode(cluster))
    }

    fn environment(cluster: &str, name: &str) -> String {
        format!("/v1/{}/environments/{}", encode(cluster), encode(name))
    }

    async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let c = self.client;
        c.read_json(c.http.post(c.url(path))).await
    }

    /// `GET /v1/{cluster}/environments`, by name, optionally only names starting with `prefix`.
    pub async fn list_environments(
        &self,
        cluster: &str,
        prefix: Option<&str>,
        page: &PageQuery,
    ) -> Result<EnvironmentList, ClientError> {
        let c = self.client;
        let mut request = c.http.get(c.url(&Self::environments(cluster))).query(page);
        if let Some(prefix) = prefix {
            request = request.query(&[("environmentNamePrefix", prefix)]);
        }
        c.read_json(request).await
    }

    /// `POST /v1/{cluster}/environments`: the environment and its revision 1.
    pub async fn create_environment(
        &self,
        cluster: &str,
        request: &CreateEnvironment,
    ) -> Result<RevisionCreated, ClientError> {
        let c = self.client;
        c.read_json(c.http.post(c.url(&Self::environments(cluster))).json(request))
            .await
    }

    /// `GET /v1/{cluster}/environments/{name}`.
    pub async fn describe_environment(
        &self,
        cluster: &str,
        name: &str,
    ) -> Result<EnvironmentResponse, ClientError> {
        self.client.get_json(&Self::environment(cluster, name), &()).await
    }

    /// `PUT /v1/{cluster}/environments/{name}`: a new revision; nothing is deployed.
    pub async fn update_environment(
        &self,
        cluster: &str,
        name: &str,
        request: &UpdateEnvironment,
    ) -> Result<RevisionCreated, ClientError> {
        let c = self.client;
        c.read_json(c.http.put(c.url(&Self::environment(cluster, name))).json(request))
            .await
    }

    /// `DELETE /v1/{cluster}/environments/{name}?terminateTasks=`.
    pub async fn delete_environment(
        &self,
        cluster: &str,
        name: &str,
        terminate_tasks: bool,
    ) -> Result<EnvironmentResponse, ClientError> {
        let c = self.client;
        let flag = if terminate_tasks { "true" } else { "false" };
        let url = c.url(&Self::environment(cluster, name));
        c.read_json(c.http.delete(url).query(&[("terminateTasks", flag)]))
            .await
    }

    /// `GET …/revisions`, oldest first, with live counts.
    pub async fn list_revisions(
        &self,
        cluster: &str,
        name: &str,
        page: &PageQuery,
    ) -> Result<RevisionList, ClientError> {
        let path = format!("{}/revisions", Self::environment(cluster, name));
        self.client.get_json(&path, page).await
    }

    /// `GET …/revisions/{id}`.
    pub async fn describe_revision(
        &self,
        cluster: &str,
        name: &str,
        revision: RevisionId,
    ) -> Result<RevisionResponse, ClientError> {
        let path = format!("{}/revisions/{}", Self::environment(cluster, name), revision.0);
        self.client.get_json(&path, &()).await
    }

    /// `POST …/deployments?revisionId=&rollback=`: deploy a revision (one older than the active one
    /// needs `rollback`).
    pub async fn start_deployment(
        &self,
        cluster: &str,
        name: &str,
        revision: RevisionId,
        rollback: bool,
    ) -> Result<DeploymentResponse, ClientError> {
        self.post_deployment(cluster, name, revision, rollback, false)
            .await
    }

    /// `POST …/deployments` with its query: the revision, and `rollback` and `dryRun` when set.
    async fn post_deployment<T: DeserializeOwned>(
        &self,
        cluster: &str,
        name: &str,
        revision: RevisionId,
        rollback: bool,
        dry_run: bool,
    ) -> Result<T, ClientError> {
        let c = self.client;
        let url = c.url(&format!("{}/deployments", Self::environment(cluster, name)));
        let revision = revision.0.to_string();
        let mut query = vec![("revisionId", revision.as_str())];
        if rollback {
            query.push(("rollback", "true"));
        }
        if dry_run {
            query.push(("dryRun", "true"));
        }
        c.read_json(c.http.post(url).query(&query)).await
    }

    /// `POST …/deployments?revisionId=&rollback=&dryRun=true`: what deploying a revision would do
    /// now, without doing it.
    pub async fn plan_deployment(
        &self,
        cluster: &str,
        name: &str,
        revision: RevisionId,
        rollback: bool,
    ) -> Result<DeploymentPlan, ClientError> {
        self.post_deployment(cluster, name, revision, rollback, true)
            .await
    }

    /// `POST …/deployments/{id}/promote`: the canary's rollout goes on to the rest of the fleet.
    pub async fn promote_deployment(
        &self,
        cluster: &str,
        name: &str,
        id: &str,
    ) -> Result<DeploymentResponse, ClientError> {
        let path = format!(
            "{}/deployments/{}/promote",
            Self::environment(cluster, name),
            encode(id)
        );
        self.post(&path).await
    }

    /// `GET …/deployments`, newest first.
    pub async fn list_deployments(
        &self,
        cluster: &str,
        name: &str,
        page: &PageQuery,
    ) -> Result<DeploymentList, ClientError> {
        let path = format!("{}/deployments", Self::environment(cluster, name));
        self.client.get_json(&path, page).await
    }

    /// `GET …/deployments/{id}`.
    pub async fn describe_deployment(
        &self,
        cluster: &str,
        name: &str,
        id: &str,
    ) -> Result<DeploymentResponse, ClientError> {
        let path = format!("{}/deployments/{}", Self::environment(cluster, name), encode(id));
        self.client.get_json(&path, &()).await
    }

    /// `POST …/deployments/{id}/stop`.
    pub async fn stop_deployment(
        &self,
        cluster: &str,
        name: &str,
        id: &str,
    ) -> Result<DeploymentResponse, ClientError> {
        let path = format!(
            "{}/deployments/{}/stop",
            Self::environment(cluster, name),
            encode(id)
        );
        self.post(&path).await
    }

    /// `POST …/rollback`: to `revision`, or by default to the revision of the last deployment that
    /// completed before the active one.
    pub async fn rollback(
        &self,
        cluster: &str,
        name: &str,
        revision: Option<RevisionId>,
    ) -> Result<DeploymentResponse, ClientError> {
        let c = self.client;
        let url = c.url(&format!("{}/rollback", Self::environment(cluster, name)));
        let body = RollbackRequest {
            environment_revision_id: revision,
        };
        c.read_json(c.http.post(url).json(&body)).await
    }

    /// `POST …/freeze`: nothing is started or stopped until thawed.
    pub async fn freeze(&self, cluster: &str, name: &str) -> Result<EnvironmentResponse, ClientError> {
        self.post(&format!("{}/freeze", Self::environment(cluster, name)))
            .await
    }

    /// `POST …/thaw`.
    pub async fn thaw(&self, cluster: &str, name: &str) -> Result<EnvironmentResponse, ClientError> {
        self.post(&format!("{}/thaw", Self::environment(cluster, name)))
            .await
    }
}

fn parse_line<T: DeserializeOwned>(line: &[u8]) -> Result<T, ClientError> {
    match serde_json::from_slice::<T>(line) {
        Ok(item) => Ok(item),
        Err(e) => match serde_json::from_slice::<blox_api::StreamError>(line) {
            Ok(end) => Err(ClientError::Stream(end.error)),
            Err(_) => Err(ClientError::Unexpected {
                status: 200,
                message: format!("bad stream line: {e}"),
            }),
        },
    }
}

async fn check(response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => Err(ClientError::Api { status, body }),
        Err(_) => Err(ClientError::Unexpected {
            status,
            message: text,
        }),
    }
}

/// Percent-encodes a path segment (ARNs hold ':' and '/').
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
