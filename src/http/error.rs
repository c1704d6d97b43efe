//! The API's error shape and the one place module errors become statuses.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::auth::AuthError;
use crate::error::Unexpected;
use crate::trading::{Rejection, TradingError};

/// A non-2xx answer: `{"error": {"code", "message", ...}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_ms: Option<i64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<i64>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn invalid_input(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing, invalid, expired or revoked token",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A 500 that says nothing; the cause goes to the log.
    pub fn internal(cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }

    /// 503: Postgres or Redis is unreachable for now; nothing was decided.
    pub fn unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "a backing service is briefly unavailable; retry shortly",
        )
        .retry_after(UNAVAILABLE_RETRY_AFTER_MS)
    }

    /// Adds `retry_after_ms` (and a `Retry-After` header in whole seconds).
    pub fn retry_after(mut self, ms: i64) -> ApiError {
        self.retry_after_ms = Some(ms);
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(ms) = self.retry_after_ms {
            let seconds = (ms.max(0) + 999) / 1000;
            response.insert_header((header::RETRY_AFTER, seconds.max(1).to_string()));
        }
        response.json(Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                retry_after_ms: self.retry_after_ms,
            },
        })
    }
}

impl From<crate::limits::Limited> for ApiError {
    fn from(limited: crate::limits::Limited) -> ApiError {
        let ms = i64::try_from(limited.retry_after.as_millis()).unwrap_or(i64::MAX);
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; slow down",
        )
        .retry_after(ms.max(1))
    }
}

/// Suggested wait after an overload 429.
const OVERLOAD_RETRY_AFTER_MS: i64 = 1_000;

impl From<Unexpected> for ApiError {
    fn from(error: Unexpected) -> ApiError {
        if error.is_overload() {
            tracing::warn!(%error, "overloaded: shedding a request");
            return ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "the server is overloaded; retry shortly",
            )
            .retry_after(OVERLOAD_RETRY_AFTER_MS);
        }
        if error.is_unavailable() {
            tracing::warn!(%error, "a backing service is unavailable: answering 503");
            return ApiError::unavailable();
        }
        ApiError::internal(&error)
    }
}

/// Suggested wait after a 503: Postgres restarts and Redis reconnects take
/// about this long.
const UNAVAILABLE_RETRY_AFTER_MS: i64 = 1_000;

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> ApiError {
        match error {
            AuthError::UsernameTaken => {
                ApiError::new(StatusCode::CONFLICT, "username_taken", "username is taken")
            }
            AuthError::InvalidCredentials => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "invalid username or password",
            ),
            // A valid token whose user is gone is as good as no token.
            AuthError::Unauthorized | AuthError::UnknownUser => ApiError::unauthorized(),
            AuthError::Forbidden => ApiError::forbidden("not allowed"),
            AuthError::Unexpected(cause) => ApiError::from(cause),
        }
    }
}

impl From<TradingError> for ApiError {
    fn from(error: TradingError) -> ApiError {
        match error {
            TradingError::InProgress => ApiError::new(
                StatusCode::CONFLICT,
                "request_in_progress",
                "a request with this idempotency key is still executing",
            ),
            TradingError::KeyReused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this idempotency key was used with a different request",
            ),
            TradingError::PlayerLocked { retry_after_ms } => ApiError::new(
                StatusCode::LOCKED,
                "player_locked",
                "trading on this player is suspended after a match event",
            )
            .retry_after(retry_after_ms),
            TradingError::HoldingsProvisional { retry_after_ms } => ApiError::new(
                StatusCode::CONFLICT,
                "holdings_provisional",
                "some of these shares were bought provisionally and cannot be sold until final",
            )
            .retry_after(retry_after_ms),
            TradingError::Unexpected(cause) => ApiError::from(cause),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> ApiError {
        match rejection {
            Rejection::UnknownPlayer => ApiError::not_found("no such player"),
            Rejection::InsufficientFunds => ApiError::new(
                StatusCode::CONFLICT,
                "insufficient_funds",
                "not enough spendable cash for this order",
            ),
            Rejection::InsufficientHoldings => ApiError::new(
                StatusCode::CONFLICT,
                "insufficient_holdings",
                "not enough shares of this player to sell",
            ),
            Rejection::PriceMoved => ApiError::new(
                StatusCode::CONFLICT,
                "price_moved",
                "the live price does not meet the limit price",
            ),
        }
    }
}

impl From<crate::sales::SalesError> for ApiError {
    fn from(error: crate::sales::SalesError) -> ApiError {
        use crate::sales::SalesError;
        match error {
            SalesError::InProgress => TradingError::InProgress.into(),
            SalesError::KeyReused => TradingError::KeyReused.into(),
            SalesError::Overloaded { retry_after_ms } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many purchases in flight; retry shortly",
            )
            .retry_after(retry_after_ms),
            SalesError::Unavailable => ApiError::unavailable(),
            SalesError::UnknownSale => ApiError::not_found("no such sale"),
            SalesError::UnknownPlayer => ApiError::not_found("no such player"),
            SalesError::NotSoldOut => ApiError::new(
                StatusCode::CONFLICT,
                "not_sold_out",
                "the waitlist opens once the sale is sold out",
            ),
            SalesError::Unexpected(cause) => ApiError::from(cause),
        }
    }
}

impl From<crate::leaderboard::LeaderboardError> for ApiError {
    fn from(error: crate::leaderboard::LeaderboardError) -> ApiError {
        use crate::leaderboard::LeaderboardError;
        match error {
            LeaderboardError::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "leaderboard_unavailable",
                "the leaderboard is being revalued; retry in a second",
            )
            .retry_after(1_000),
            LeaderboardError::Unexpected(cause) => ApiError::from(cause),
        }
    }
}

impl From<crate::sales::PurchaseRejection> for ApiError {
    fn from(rejection: crate::sales::PurchaseRejection) -> ApiError {
        use crate::sales::PurchaseRejection;
        match rejection {
            PurchaseRejection::UnknownSale => ApiError::not_found("no such sale"),
            PurchaseRejection::NotOpen => ApiError::new(
                StatusCode::CONFLICT,
                "sale_not_open",
                "the sale has not started yet",
            ),
            PurchaseRejection::LimitExceeded => ApiError::new(
                StatusCode::CONFLICT,
                "limit_exceeded",
                "this purchase would take you past the sale's per-user limit",
            ),
            PurchaseRejection::SoldOut => ApiError::new(
                StatusCode::CONFLICT,
                "sold_out",
                "not enough units remain for this purchase",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exhausted_connection_pool_is_a_429_with_retry_after_not_a_500() {
        let timeout = deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait);
        let error = ApiError::from(Unexpected::from_error(timeout));
        assert_eq!(error.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(error.code, "rate_limited");
        assert_eq!(error.retry_after_ms, Some(1_000));
        let response = error.error_response();
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "1");
    }

    #[test]
    fn an_unreachable_database_is_a_503_with_retry_after() {
        let closed = deadpool_postgres::PoolError::Closed;
        let error = ApiError::from(Unexpected::from_error(closed));
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.code, "service_unavailable");
        assert_eq!(error.retry_after_ms, Some(1_000));
        let response = error.error_response();
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "1");
    }

    #[test]
    fn a_lost_redis_connection_is_a_503_however_deep_in_the_cause_chain() {
        let io = fred::error::Error::new(fred::error::ErrorKind::IO, "connection reset");
        let wrapped = crate::bus::BusError::Redis(io);
        let error = ApiError::from(Unexpected::from_error(wrapped));
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        let parse = fred::error::Error::new(fred::error::ErrorKind::Parse, "bad reply");
        let error = ApiError::from(Unexpected::from_error(crate::bus::BusError::Redis(parse)));
        assert_eq!(error.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn other_unexpected_failures_are_a_bare_500() {
        let error = ApiError::from(Unexpected::msg("disk on fire"));
        assert_eq!(error.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error.message, "internal error");
    }
}
