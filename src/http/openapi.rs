//! The OpenAPI 3.1 description of the REST API, served at
//! `GET /api/v1/openapi.json` and read on `GET /api/v1/docs`.
//!
//! Generated from the code: each handler carries its `#[utoipa::path]`
//! (path, parameters, body, success answers), the wire types derive their
//! schemas, and the enums are the domain's own lists. Error answers are
//! added here from [`errors_of`], one table for every operation, each
//! status with the exact `code`s it can carry (405 for an undocumented
//! method, with `Allow`, goes for every route and is not repeated; a 500 is
//! a bug, never documented); `tests/api/openapi.rs` checks
//! that every route is described and every description is routed, and
//! `scripts/schemathesis` holds the live server to the document.
//!
//! The WebSocket protocol cannot be modelled by OpenAPI: its prose is the
//! `websocket` tag's description (`websocket.md`) and its messages are JSON
//! Schemas in the components (`websocket.schemas.json`), which the API
//! tests check every received frame against.

use std::sync::OnceLock;

use serde_json::Value;
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, PathItem, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use super::handlers;

/// A string schema whose values are a domain enum's API names.
macro_rules! names_schema {
    ($(#[doc = $doc:literal])* $name:ident, $all:expr) => {
        $(#[doc = $doc])*
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some(concat!($($doc),*).trim()))
                    .enum_values(Some($all.iter().map(|value| value.as_str())))
                    .into()
            }
        }

        impl ToSchema for $name {}
    };
}

names_schema!(
    /// Which way an order goes.
    SideName,
    crate::domain::Side::ALL
);
names_schema!(
    /// `pending` (waiting out the `delay` policy), `provisional` (filled, voided if an event that occurred before the fill arrives before `final_at`), `filled`, `cancelled` (never filled; see `reason`) or `voided` (filled, then reversed exactly; see `reason`).
    OrderStatusName,
    crate::trading::OrderStatus::ALL
);
names_schema!(
    /// Where a drop stands.
    SaleStatusName,
    crate::sales::SaleStatus::ALL
);
names_schema!(
    /// `reserved` (units taken, durable, awaiting settlement), `held` (the user's cash held for it), `completed` (charged exactly once, `share_numbers` given) or `failed` (nothing charged, units given back; see `failure_reason`).
    PurchaseStatusName,
    crate::sales::PurchaseStatus::ALL
);
names_schema!(
    /// A match event's kind; each moves the price by its configured jump.
    EventKindName,
    crate::ingest::EventKind::ALL
);

/// The `Idempotency-Key` header of the money-moving POSTs.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKeyHeader {
    /// Required: 1–64 visible ASCII characters. A retry with the same key
    /// and body gets the stored answer and moves nothing again; the same
    /// key with a different body is 422 `idempotency_key_reused`; while the
    /// first is still executing, 409 `request_in_progress`.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 64,
        pattern = "^[\\x21-\\x7E]{1,64}$"
    )]
    #[allow(dead_code)]
    idempotency_key: String,
}

/// Every non-2xx answer: `{"error": {"code", "message", "retry_after_ms"?}}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Stable machine-readable code; each response lists the codes it can
    /// carry.
    code: String,
    /// Human-readable; may change.
    message: String,
    /// With 409 `holdings_provisional`, 423, 429 and 503: wait this long
    /// before retrying (also sent as `Retry-After`, in whole seconds).
    #[schema(nullable = false)]
    retry_after_ms: Option<i64>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Matchday",
        description = "A real-time fantasy sports exchange. Money is integer cents. Errors are `{\"error\": {\"code\", \"message\"}}` with the codes listed per response; 429 and 503 carry `Retry-After`. See the `websocket` tag for the live feed.",
        license(name = "MIT", identifier = "MIT"),
    ),
    paths(
        handlers::healthz,
        handlers::readyz,
        handlers::metrics,
        handlers::websocket,
        handlers::register,
        handlers::login,
        handlers::logout,
        handlers::me,
        handlers::list_players,
        handlers::get_player,
        handlers::player_history,
        handlers::player_events,
        handlers::recent_events,
        handlers::place_order,
        handlers::list_orders,
        handlers::get_order,
        handlers::portfolio,
        handlers::leaderboard,
        handlers::leaderboard_me,
        handlers::list_sales,
        handlers::get_sale,
        handlers::purchase,
        handlers::list_purchases,
        handlers::get_purchase,
        handlers::join_waitlist,
        handlers::bulk_users,
        handlers::create_player,
        handlers::audit,
        handlers::fairness_suspects,
        handlers::push_event,
        handlers::feed_webhook,
        handlers::create_sale,
        handlers::sale_audit,
        handlers::openapi_json,
        handlers::api_docs,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&SecuritySchemes, &ErrorResponses),
    tags(
        (name = "accounts", description = "Registration and tokens. A token is a bearer token for every user endpoint and `?token=` on the WebSocket."),
        (name = "players", description = "Players, live prices, price history and applied match events."),
        (name = "trading", description = "Orders at the live price, and the portfolio. Every order needs an `Idempotency-Key`. Trading on a player locks after a match event (423 `player_locked`); under the `delay` and `void_window` fairness policies orders can be `pending` or `provisional` (see `OrderStatusName`)."),
        (name = "leaderboard", description = "Net worth at live prices, ranked."),
        (name = "drops", description = "Flash sales of a newly listed player's shares: never oversold, nobody charged for nothing, 429 under overload, a waitlist for released units."),
        (name = "feed", description = "Match events in: the admin push, or the signed webhook for a feed provider."),
        (name = "admin", description = "Operator endpoints; they need the `admin.token` bearer token."),
        (name = "operations", description = "Health, readiness and Prometheus metrics."),
        (name = "websocket", description = include_str!("websocket.md")),
        (name = "documentation", description = "This document and its reference page."),
    ),
)]
struct ApiDoc;

/// The document as served: utoipa's output plus the WebSocket schemas.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(build)
}

/// [`document`] serialised once, as `GET /api/v1/openapi.json` sends it.
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| document().to_string())
}

fn build() -> Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    let websocket: Value =
        serde_json::from_str(include_str!("websocket.schemas.json")).unwrap_or(Value::Null);
    if let (Some(schemas), Value::Object(extra)) = (
        document
            .pointer_mut("/components/schemas")
            .and_then(Value::as_object_mut),
        websocket,
    ) {
        schemas.extend(extra);
    }
    document
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(description.to_string());
            SecurityScheme::Http(http)
        };
        components.add_security_scheme(
            "user",
            bearer("A user token from `POST /api/v1/auth/register` or `/auth/login`."),
        );
        components.add_security_scheme(
            "admin",
            bearer("The operator's `admin.token` (the admin API is disabled without one)."),
        );
        components.add_security_scheme(
            "webhook",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                crate::ingest::webhook::SIGNATURE_HEADER,
                "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\" under feed.webhook_secret>`; \
                 older than the tolerance or wrong is 401 `invalid_signature`",
            ))),
        );
    }
}

/// Statuses and codes that a group of operations shares.
type Answers = &'static [(u16, &'static [&'static str])];

/// Any request: the server-wide limits on the URI and headers.
const ANY: Answers = &[(414, &["uri_too_long"]), (431, &["headers_too_large"])];
/// Anything that reads or writes Postgres or Redis: shed under overload,
/// 503 while a backing service is away.
const BACKED: Answers = &[(429, &["rate_limited"]), (503, &["service_unavailable"])];
/// A bearer user token, within the user's rate limit.
const USER: Answers = &[(401, &["unauthorized"]), (429, &["rate_limited"])];
/// The admin token.
const ADMIN: Answers = &[(401, &["unauthorized"]), (403, &["forbidden"])];
/// A JSON body: declared `application/json`, at most 64 KiB, JSON, of the
/// right shape and values.
const JSON_BODY: Answers = &[
    (400, &["bad_request"]),
    (413, &["payload_too_large"]),
    (415, &["unsupported_media_type"]),
    (422, &["invalid_input"]),
];
/// An `Idempotency-Key` header.
const IDEMPOTENT: Answers = &[
    (
        400,
        &["idempotency_key_required", "invalid_idempotency_key"],
    ),
    (409, &["request_in_progress"]),
    (422, &["idempotency_key_reused"]),
];
/// Integer query parameters: not an integer 400, below the minimum 422.
const QUERY: Answers = &[(400, &["bad_request"]), (422, &["invalid_input"])];
/// An id in the path naming nothing (or anything but a positive integer).
const NOT_FOUND: Answers = &[(404, &["not_found"])];

/// Every error answer of the operation `operation_id` (the handler's name):
/// the status and the `code`s it can carry. None for an unknown operation.
pub fn errors_of(operation_id: &str) -> Option<Vec<(u16, Vec<&'static str>)>> {
    let groups: &[Answers] = match operation_id {
        "healthz" | "metrics" | "openapi_json" | "api_docs" => &[],
        // Its 503 is the readiness answer itself, not an error body.
        "readyz" => &[],
        "websocket" => &[&[
            (400, &["bad_request"]),
            (401, &["unauthorized"]),
            (503, &["too_many_connections"]),
        ]],
        "register" => &[
            BACKED,
            JSON_BODY,
            &[(409, &["username_taken"]), (429, &["rate_limited"])],
        ],
        "login" => &[BACKED, JSON_BODY, &[(401, &["invalid_credentials"])]],
        "logout" | "me" | "portfolio" => &[BACKED, USER],
        "list_players" | "list_sales" => &[BACKED],
        "get_player" | "get_sale" => &[BACKED, NOT_FOUND],
        "player_history" | "player_events" => &[BACKED, QUERY, NOT_FOUND],
        "recent_events" => &[BACKED, QUERY],
        "place_order" => &[
            BACKED,
            USER,
            IDEMPOTENT,
            JSON_BODY,
            NOT_FOUND,
            &[
                (
                    409,
                    &[
                        "insufficient_funds",
                        "insufficient_holdings",
                        "price_moved",
                        "holdings_provisional",
                    ],
                ),
                (423, &["player_locked"]),
            ],
        ],
        "list_orders" => &[BACKED, USER, QUERY],
        "get_order" | "get_purchase" | "list_purchases" => &[BACKED, USER, NOT_FOUND],
        // Redis-backed, and every failure of it is `leaderboard_unavailable`.
        "leaderboard" => &[QUERY, &[(503, &["leaderboard_unavailable"])]],
        "leaderboard_me" => &[USER, &[(503, &["leaderboard_unavailable"])]],
        "purchase" => &[
            BACKED,
            USER,
            IDEMPOTENT,
            JSON_BODY,
            NOT_FOUND,
            &[(409, &["sale_not_open", "limit_exceeded", "sold_out"])],
        ],
        "join_waitlist" => &[BACKED, USER, NOT_FOUND, &[(409, &["not_sold_out"])]],
        "bulk_users" => &[BACKED, ADMIN, JSON_BODY, &[(409, &["username_taken"])]],
        "create_player" => &[BACKED, ADMIN, JSON_BODY],
        "audit" => &[BACKED, ADMIN],
        "fairness_suspects" => &[BACKED, ADMIN, QUERY],
        "push_event" | "create_sale" => &[BACKED, ADMIN, JSON_BODY, NOT_FOUND],
        "sale_audit" => &[BACKED, ADMIN, NOT_FOUND],
        "feed_webhook" => &[
            BACKED,
            JSON_BODY,
            NOT_FOUND,
            &[(401, &["invalid_signature"]), (403, &["forbidden"])],
        ],
        _ => return None,
    };
    let mut answers: Vec<(u16, Vec<&'static str>)> = Vec::new();
    for (status, codes) in groups.iter().copied().chain([ANY]).flatten() {
        match answers.iter_mut().find(|(known, _)| known == status) {
            Some((_, known)) => {
                for code in codes.iter() {
                    if !known.contains(code) {
                        known.push(code);
                    }
                }
            }
            None => answers.push((*status, codes.to_vec())),
        }
    }
    answers.sort_by_key(|(status, _)| *status);
    Some(answers)
}

/// Statuses whose errors can carry `retry_after_ms` and `Retry-After`.
const RETRY_AFTER: [u16; 4] = [409, 423, 429, 503];

struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for operation in operations(item) {
                let id = operation.operation_id.clone().unwrap_or_default();
                for (status, codes) in errors_of(&id).unwrap_or_default() {
                    let key = status.to_string();
                    if operation.responses.responses.contains_key(&key) {
                        continue;
                    }
                    operation
                        .responses
                        .responses
                        .insert(key, error_response(status, &codes).into());
                }
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
        item.head.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// An error answer: `ErrorBody` whose `code` is one of `codes`.
fn error_response(status: u16, codes: &[&'static str]) -> utoipa::openapi::Response {
    let listed = codes
        .iter()
        .map(|code| format!("`{code}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let reason = actix_web::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let narrowed = ObjectBuilder::new()
        .property(
            "error",
            ObjectBuilder::new().property(
                "code",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(codes.iter().copied())),
            ),
        )
        .build();
    let schema = AllOfBuilder::new()
        .item(Ref::from_schema_name("ErrorBody"))
        .item(narrowed)
        .build();
    let mut response = ResponseBuilder::new()
        .description(format!("{reason}: {listed}"))
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Schema::AllOf(schema)))
                .build(),
        );
    if RETRY_AFTER.contains(&status) {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                )
                .description(Some(
                    "Seconds to wait before retrying; sent whenever the body has `retry_after_ms`",
                ))
                .build(),
        );
    }
    response.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operation_ids() -> Vec<String> {
        let mut ids = Vec::new();
        for item in document()["paths"]
            .as_object()
            .into_iter()
            .flat_map(|p| p.values())
        {
            for (_, operation) in item.as_object().into_iter().flatten() {
                if let Some(id) = operation["operationId"].as_str() {
                    ids.push(id.to_string());
                }
            }
        }
        ids
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_operation_named_and_its_errors_listed() {
        let document = document();
        assert_eq!(document["openapi"], "3.1.0");
        let ids = operation_ids();
        assert_eq!(ids.len(), 35, "{ids:?}");
        for id in &ids {
            assert!(errors_of(id).is_some(), "no error table entry for {id}");
        }
        let order = &document["paths"]["/api/v1/orders"]["post"];
        assert!(order["responses"]["423"]["headers"]["Retry-After"].is_object());
        let codes = &order["responses"]["409"]["content"]["application/json"]["schema"]["allOf"][1]
            ["properties"]["error"]["properties"]["code"]["enum"];
        assert_eq!(
            codes,
            &serde_json::json!([
                "request_in_progress",
                "insufficient_funds",
                "insufficient_holdings",
                "price_moved",
                "holdings_provisional"
            ])
        );
    }

    #[test]
    fn enum_schemas_list_the_domain_names() {
        let schemas = &document()["components"]["schemas"];
        assert_eq!(
            schemas["SideName"]["enum"],
            serde_json::json!(["buy", "sell"])
        );
        assert_eq!(
            schemas["EventKindName"]["enum"].as_array().map(Vec::len),
            Some(crate::ingest::EventKind::ALL.len())
        );
        assert_eq!(
            schemas["OrderStatusName"]["enum"],
            serde_json::json!(["pending", "provisional", "filled", "cancelled", "voided"])
        );
    }

    #[test]
    fn every_schema_reference_resolves() {
        let text = document().to_string();
        let schemas = document()["components"]["schemas"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let prefix = "\"#/components/schemas/";
        let mut rest = text.as_str();
        let mut checked = 0;
        while let Some(at) = rest.find(prefix) {
            rest = &rest[at + prefix.len()..];
            let name = &rest[..rest.find('"').unwrap_or(0)];
            assert!(schemas.contains_key(name), "dangling $ref to {name}");
            checked += 1;
        }
        assert!(checked > 50, "only {checked} references found");
    }
}
