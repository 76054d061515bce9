//! The one place where errors become HTTP answers: a stable machine code, a human message, nothing internal.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use super::admin::Role;

/// Seconds a sender should wait before retrying when we could not store its request.
pub const RETRY_AFTER_SECS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is larger than this source accepts ({limit} bytes)")]
    PayloadTooLarge { limit: usize },
    #[error("no webhook source is configured under this name")]
    UnknownSource,
    #[error("the body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the request could not be authenticated")]
    Unauthenticated,
    #[error("{0}")]
    MalformedPayload(String),
    #[error("the delivery id must be 1 to 256 visible ASCII characters")]
    InvalidDeliveryId,
    #[error("the request body could not be read")]
    UnreadableBody,
    #[error("the event could not be stored; retry later")]
    StoreUnavailable,
    #[error("the store is not reachable")]
    NotReady,
    #[error("no such route")]
    NotFound,
    #[error("{}", unauthenticated_text(.token_presented))]
    AdminUnauthenticated { token_presented: bool },
    #[error("this request needs the `{}` role", .needed.as_str())]
    InsufficientRole { needed: Role },
    #[error("the keys that sign admin tokens cannot be fetched; retry later")]
    AuthUnavailable,
    #[error("{0}")]
    InvalidParameter(String),
    #[error("the cursor is not one this list handed out; start again without it")]
    InvalidCursor,
    #[error("no event has this id")]
    UnknownEvent,
    #[error("no reconciliation run has this id")]
    UnknownReconcileRun,
    #[error("a worker is deciding this event right now; try again in a moment")]
    EventBeingDecided,
    #[error("the store could not be read; retry later")]
    StoreUnreadable,
    #[error("an upstream service did not answer; retry later")]
    UpstreamUnavailable,
    #[error("this method is not allowed here; use {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error("{0}")]
    InvalidBody(String),
    #[error("no grant has this id")]
    UnknownGrant,
    #[error("the grant is {0}, not active: there is nothing to revoke")]
    GrantNotActive(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnknownSource => "unknown_source",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Unauthenticated => "invalid_signature",
            ApiError::MalformedPayload(_) => "malformed_payload",
            ApiError::InvalidDeliveryId => "invalid_delivery_id",
            ApiError::UnreadableBody => "unreadable_body",
            ApiError::StoreUnavailable => "store_unavailable",
            ApiError::NotReady => "not_ready",
            ApiError::NotFound => "not_found",
            ApiError::AdminUnauthenticated { .. } => "unauthorized",
            ApiError::InsufficientRole { .. } => "insufficient_role",
            ApiError::AuthUnavailable => "auth_unavailable",
            ApiError::InvalidParameter(_) => "invalid_parameter",
            ApiError::InvalidCursor => "invalid_cursor",
            ApiError::UnknownEvent => "unknown_event",
            ApiError::UnknownReconcileRun => "unknown_reconcile_run",
            ApiError::EventBeingDecided => "event_being_decided",
            ApiError::StoreUnreadable => "store_unavailable",
            ApiError::UpstreamUnavailable => "upstream_unavailable",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::UnknownGrant => "unknown_grant",
            ApiError::GrantNotActive(_) => "grant_not_active",
        }
    }
}

fn unauthenticated_text(token_presented: &bool) -> &'static str {
    if *token_presented {
        "the bearer token was not accepted"
    } else {
        "this route needs a bearer token (Authorization: Bearer ...)"
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnknownSource | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::MalformedPayload(_)
            | ApiError::InvalidDeliveryId
            | ApiError::UnreadableBody
            | ApiError::InvalidParameter(_)
            | ApiError::InvalidCursor => StatusCode::BAD_REQUEST,
            ApiError::StoreUnavailable
            | ApiError::NotReady
            | ApiError::UpstreamUnavailable
            | ApiError::AuthUnavailable
            | ApiError::StoreUnreadable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::AdminUnauthenticated { .. } => StatusCode::UNAUTHORIZED,
            ApiError::InsufficientRole { .. } => StatusCode::FORBIDDEN,
            ApiError::UnknownEvent => StatusCode::NOT_FOUND,
            ApiError::UnknownReconcileRun => StatusCode::NOT_FOUND,
            ApiError::EventBeingDecided => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::InvalidBody(_) => StatusCode::BAD_REQUEST,
            ApiError::UnknownGrant => StatusCode::NOT_FOUND,
            ApiError::GrantNotActive(_) => StatusCode::CONFLICT,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::StoreUnavailable
            | ApiError::NotReady
            | ApiError::UpstreamUnavailable
            | ApiError::AuthUnavailable
            | ApiError::StoreUnreadable => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS)));
            }
            ApiError::Unauthenticated => {
                response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Signature")));
            }
            // RFC 6750: the realm always; an error only when a token was presented.
            ApiError::AdminUnauthenticated { token_presented } => {
                let challenge = if *token_presented {
                    "Bearer realm=\"grantbridge\", error=\"invalid_token\""
                } else {
                    "Bearer realm=\"grantbridge\""
                };
                response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge)));
            }
            ApiError::InsufficientRole { .. } => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"grantbridge\", error=\"insufficient_scope\""),
                ));
            }
            ApiError::MethodNotAllowed { allow } => {
                response.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
            }
            _ => {}
        }
        response.json(ErrorBody { error: ErrorDetail { code: self.code(), message: self.to_string() } })
    }
}
