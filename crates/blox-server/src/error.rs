//! Every error the API answers with, as `{"code", "message", "field"}` JSON.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use blox_api::ErrorBody;
use blox_store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn bad_request(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn internal(context: &str, err: &dyn std::error::Error) -> ApiError {
        tracing::error!(context, error = %err, "request failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "InternalError",
            message: format!("{context} failed; see the server log"),
            field: None,
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.to_owned(),
            message: self.message.clone(),
            field: self.field.clone(),
        }
    }

    /// Maps a store error of a change-log read at `entityVersion`.
    pub fn from_log_read(err: StoreError) -> ApiError {
        match err {
            StoreError::Compacted {
                requested,
                oldest_resumable,
            } => ApiError {
                status: StatusCode::GONE,
                code: "EntityVersionCompacted",
                message: format!(
                    "entityVersion {requested} is older than the retained change log; resume from \
                     {oldest_resumable} or later, after listing the current state"
                ),
                field: Some("entityVersion".into()),
            },
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
        (self.status, Json(self.body())).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        ApiError::internal("reading the store", &err)
    }
}
