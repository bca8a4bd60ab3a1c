//! The blox REST API as black-box tests call it: JSON in and out, samples of `/metrics`, and the
//! deployments of the v1.0 environment API.

use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Value, json};

use crate::wait_until;

/// A request that takes longer has failed (a server stopped with SIGSTOP never answers).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// JSON requests to one blox server.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base_url: String,
}

impl Api {
    /// A client of the server at `base_url` (`http://127.0.0.1:PORT`).
    pub fn new(base_url: &str) -> Api {
        Api::with_headers(base_url, reqwest::header::HeaderMap::new())
    }

    /// A client that sends `Authorization: Bearer TOKEN` with every request (a server started with
    /// `--auth-token-file`).
    pub fn with_token(base_url: &str, token: &str) -> Api {
        Api::with_headers(
            base_url,
            blox_client::bearer(token).expect("a token is visible ASCII"),
        )
    }

    fn with_headers(base_url: &str, headers: reqwest::header::HeaderMap) -> Api {
        Api {
            http: crate::http_client()
                .timeout(REQUEST_TIMEOUT)
                .default_headers(headers)
                .build()
                .expect("an HTTP client with a timeout builds"),
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// (status, body) of a request with an optional JSON body; an empty body is `null`. Fails when
    /// the server does not answer, or answers with a body that is not JSON.
    pub async fn try_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base_url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .with_context(|| format!("{method} {path}: body"))?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON: {text}"))?
        };
        Ok((status, body))
    }

    /// [`Api::try_call`] that panics when the server does not answer in JSON.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A request that must answer 200: its body.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, answer) = self.call(method.clone(), path, body).await;
        assert_eq!(status, 200, "{method} {path}: {answer}");
        answer
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let response = self
            .http
            .get(format!("{}/metrics", self.base_url))
            .send()
            .await
            .context("GET /metrics")?;
        if !response.status().is_success() {
            bail!("GET /metrics: {}", response.status());
        }
        response.text().await.context("GET /metrics: body")
    }

    /// The sum of a metric's samples whose labels include `labels` (0 before a counter's first
    /// increment).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics().await.unwrap_or_else(|e| panic!("{e:#}"));
        metric_sum(&text, name, labels)
    }

    /// The sum of a counter over its labels, from `/metrics` (0 before its first increment).
    pub async fn counter(&self, name: &str) -> u64 {
        self.metric(name, &[]).await as u64
    }

    /// Starts a deployment of revision `revision` of an environment (v1.0 API); returns its id.
    pub async fn deploy(&self, cluster: &str, environment: &str, revision: u64) -> String {
        let path = format!("/v1/{cluster}/environments/{environment}/deployments?revisionId={revision}");
        deployment_id(&self.ok(Method::POST, &path, None).await)
    }

    /// A deployment as the v1.0 API describes it (its `deployment` object).
    pub async fn deployment(&self, cluster: &str, environment: &str, id: &str) -> Value {
        let path = format!("/v1/{cluster}/environments/{environment}/deployments/{id}");
        self.ok(Method::GET, &path, None).await["deployment"].clone()
    }

    /// Waits until the deployment is completed with `instances` tasks desired, healthy and running.
    pub async fn wait_completed(
        &self,
        cluster: &str,
        environment: &str,
        id: &str,
        instances: usize,
        deadline: Duration,
    ) {
        let counts = json!({"desired": instances, "healthy": instances, "total": instances});
        wait_until(&format!("deployment {id} completes"), deadline, || async {
            let d = self.deployment(cluster, environment, id).await;
            d["status"] == "completed" && d["counts"] == counts
        })
        .await;
    }
}

/// The `deploymentId` of a v1.0 answer about a deployment.
pub fn deployment_id(answer: &Value) -> String {
    answer["deploymentId"]
        .as_str()
        .unwrap_or_else(|| panic!("no deploymentId in {answer}"))
        .to_owned()
}

/// The sum of the samples of `name` in a Prometheus text exposition whose labels include `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let has = |(key, wanted): &(&str, &str)| {
                rest.split(',').any(|pair| {
                    pair.split_once('=')
                        .is_some_and(|(k, v)| k == *key && v.trim_matches('"') == *wanted)
                })
            };
            labels.iter().all(has).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_samples_with_the_labels_asked_for() {
        let text = "# HELP blox_x x\n# TYPE blox_x counter\nblox_x{event=\"lost\"} 1\n\
                    blox_x{event=\"acquired\",replica=\"r1\"} 2\nblox_x_total 7\nblox_y 3.5\n";
        assert_eq!(metric_sum(text, "blox_x", &[]), 3.0);
        assert_eq!(metric_sum(text, "blox_x", &[("event", "acquired")]), 2.0);
        assert_eq!(metric_sum(text, "blox_x", &[("event", "none")]), 0.0);
        assert_eq!(metric_sum(text, "blox_y", &[]), 3.5);
        assert_eq!(metric_sum(text, "blox_z", &[]), 0.0);
    }
}
