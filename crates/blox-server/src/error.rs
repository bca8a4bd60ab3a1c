//! Every error the API answers with, as `{"code", "message", "field"}` JSON; on the v0.3 routes,
//! optionally as v0.3's plain text (`--v03-errors text`), which Blox v0.3's generated clients decode.

use axum::Json;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use blox_api::ErrorBody;
use blox_model::daemon::{CommandError, lifecycle::Resource};
use blox_store::StoreError;

use crate::environments::CasError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Rarely set, so boxed: errors travel in `Result`s everywhere.
    pub details: Option<Box<Details>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    /// The resource not found (type, id), on a 404 of the scheduler's API.
    pub resource: Option<(&'static str, String)>,
    /// What Blox v0.3 answered in this case, when it said something this one does not derive from
    /// the code (see [`v03_message`]).
    pub v03: Option<String>,
    /// Seconds a client should wait before trying again (`Retry-After`), on a 503 of a full server.
    pub retry_after: Option<u64>,
}

/// Marks a response that is v0.3's plain text on purpose, so that no later layer makes it JSON.
#[derive(Debug, Clone, Copy)]
pub struct V03Text;

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            details: None,
        }
    }

    pub fn bad_request(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.into()),
            ..ApiError::new(StatusCode::BAD_REQUEST, code, message)
        }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    pub fn internal(context: &str, err: &dyn std::error::Error) -> ApiError {
        tracing::error!(context, error = %err, "request failed");
        ApiError::internal_message(context)
    }

    /// A 500 that says what failed and nothing of why (the why goes to the log).
    pub fn internal_message(context: &str) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("{context} failed; see the server log"),
        )
    }

    /// Asks the client to try again after `seconds` (`Retry-After`).
    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.details.get_or_insert_default().retry_after = Some(seconds);
        self
    }

    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    /// v0.3's message for this case.
    pub fn v03(mut self, message: impl Into<String>) -> ApiError {
        self.details.get_or_insert_default().v03 = Some(message.into());
        self
    }

    /// The resource not found.
    pub fn resource(mut self, kind: &'static str, id: impl Into<String>) -> ApiError {
        self.details.get_or_insert_default().resource = Some((kind, id.into()));
        self
    }

    fn resource_of(&self) -> Option<&(&'static str, String)> {
        self.details.as_ref()?.resource.as_ref()
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.to_owned(),
            message: self.message.clone(),
            field: self.field.clone(),
            resource_type: self.resource_of().map(|r| r.0.to_owned()),
            resource_id: self.resource_of().map(|r| r.1.clone()),
        }
    }

    /// A resource of the scheduler's API not found.
    pub fn missing(resource: Resource, id: &str) -> ApiError {
        let (code, message) = match resource {
            Resource::Environment => ("EnvironmentNotFound", format!("environment {id} not found")),
            Resource::Revision => ("RevisionNotFound", format!("revision {id} not found")),
            Resource::Deployment => ("DeploymentNotFound", format!("deployment {id} not found")),
        };
        ApiError::not_found(code, message).resource(resource.name(), id)
    }

    /// Maps a store error of a change-log read at `entityVersion`.
    pub fn from_log_read(err: StoreError) -> ApiError {
        match err {
            // 400, as v0.3 answered a compacted revision ("Entity version is out of range"); the
            // code tells it from a position ahead of the log.
            StoreError::Compacted {
                requested,
                oldest_resumable,
            } => ApiError::bad_request(
                "entityVersion",
                "EntityVersionCompacted",
                format!(
                    "entityVersion {requested} is older than the retained change log; resume from \
                     {oldest_resumable} or later, after listing the current state"
                ),
            ),
            StoreError::Future { requested, head } => ApiError::bad_request(
                "entityVersion",
                "EntityVersionOutOfRange",
                format!("entityVersion {requested} is ahead of the latest change {head}"),
            ),
            other => ApiError::internal("reading the change log", &other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(seconds) = self.details.as_ref().and_then(|d| d.retry_after) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        // Kept for the v0.3 text-error layer.
        response.extensions_mut().insert(self);
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        ApiError::internal("reading the store", &err)
    }
}

impl From<CommandError> for ApiError {
    fn from(err: CommandError) -> ApiError {
        match err {
            CommandError::NotFound { resource, id } => ApiError::missing(resource, &id),
            CommandError::Exists { name } => ApiError::conflict(
                "EnvironmentExists",
                format!("environment {name} already exists"),
            )
            .with_field("environmentName"),
            CommandError::Invalid { field, code, message } => ApiError::bad_request(field, code, message),
            CommandError::Conflict { code, message } => ApiError::conflict(code, message),
            CommandError::StaleToken { token, current } => {
                let message = format!("Token '{token}' is outdated and does not match the environment token '{current}'");
                ApiError::bad_request("deploymentToken", "StaleDeploymentToken", message.clone()).v03(message)
            }
            CommandError::TokenUsed { token, deployment } => ApiError::bad_request(
                "deploymentToken",
                "DeploymentTokenUsed",
                format!("Token '{token}' was already used by deployment {deployment}; update the environment for a new token"),
            )
            .v03(format!("Deployment with token '{token}' already exists")),
        }
    }
}

impl From<CasError> for ApiError {
    fn from(err: CasError) -> ApiError {
        match err {
            CasError::Command(e) => e.into(),
            CasError::Store(e) => ApiError::internal("writing the environment", &e),
            CasError::Document(e) => ApiError::internal("reading a stored document", &e),
            CasError::KeptChanging(name) => ApiError::conflict(
                "ConcurrentUpdate",
                format!("environment {name} kept changing; try again"),
            ),
        }
    }
}

/// How errors are written on the v0.3 routes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum V03Errors {
    /// `{"code", "message", "field"}`, like every other route.
    #[default]
    Json,
    /// v0.3's plain-text messages (`text/plain`, the message and a newline).
    Text,
}

/// Rewrites errors of the v0.3 routes as v0.3's plain text when asked to.
pub async fn v03_errors(State(style): State<V03Errors>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let response = next.run(request).await;
    if style == V03Errors::Json {
        return response;
    }
    let Some(error) = response.extensions().get::<ApiError>() else {
        return response;
    };
    let scheduler = route
        .as_deref()
        .is_some_and(|r| r.starts_with("/v1/environments") || r == "/v1/ping");
    let mut text = v03_message(error, scheduler);
    text.push('\n');
    let status = response.status();
    let mut rewritten = Response::new(Body::from(text));
    *rewritten.status_mut() = status;
    rewritten.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(retry_after) = response.headers().get(header::RETRY_AFTER) {
        rewritten
            .headers_mut()
            .insert(header::RETRY_AFTER, retry_after.clone());
    }
    rewritten.extensions_mut().insert(V03Text);
    rewritten
}

/// What Blox v0.3 said in this case: the cluster-state service's messages, or (`scheduler`) the
/// daemon scheduler's.
pub fn v03_message(error: &ApiError, scheduler: bool) -> String {
    if let Some(message) = error.details.as_ref().and_then(|d| d.v03.as_ref()) {
        return message.clone();
    }
    let fixed = match error.code {
        "UnsupportedParameter" if scheduler => "At least one of the filters provided is not supported",
        "UnsupportedParameter" => "At least one of the filters provided is unsupported",
        "RepeatedParameter" => "At least one of the filters provided is specified multiple times",
        "InvalidStatus" => "Invalid status",
        "InvalidCluster" => "Invalid cluster ARN or name",
        "InvalidEntityVersion" => "Invalid entity version",
        "EntityVersionOutOfRange" | "EntityVersionCompacted" => "Entity version is out of range",
        "TaskNotFound" => "Task not found",
        "InstanceNotFound" => "Instance not found",
        "InternalError" if scheduler => "Server Error",
        "InternalError" => "Unexpected internal server error",
        _ => return error.message.clone(),
    };
    fixed.to_owned()
}

/// axum's `Path`, whose rejection (a segment that is not UTF-8 once decoded, one that does not
/// parse) is an [`ApiError`] naming the path, as every other error.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::PathRejection) -> ApiError {
        if rejection.status().is_server_error() {
            tracing::error!(error = %rejection.body_text(), "path extraction failed");
            return ApiError::internal_message("reading the path");
        }
        ApiError::bad_request("path", "InvalidPath", rejection.body_text())
    }
}
