//! Property tests: for every request type, any JSON value in any field
//! (or a field removed, an unknown one added, the whole body replaced) is
//! either a valid request or a 4xx in the error shape that changes
//! nothing. Never a 5xx. Path ids and query parameters get the same with
//! arbitrary text.
//!
//! proptest drives a synchronous test whose own tokio runtime runs the app;
//! each case is one request. `PROPTEST_CASES` sets the cases per request
//! type (default 48); a failure prints the shrunk input.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};

use crate::helpers::*;

/// Any JSON value: the extremes of every type, text that looks like SQL or
/// markup, deep nesting.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            Just(i64::MIN),
            Just(i64::MAX),
            Just(0i64),
            Just(-1i64),
            Just(1i64)
        ]
        .prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        Just(json!(1e308)),
        Just(json!(0.5)),
        ".{0,40}".prop_map(Value::from),
        prop_oneof![
            Just("'; DROP TABLE users; --"),
            Just("<script>alert(1)</script>"),
            Just("\u{0}\u{1b}[31m"),
            Just("buy"),
            Just("sell"),
            Just("goal"),
            Just("2026-11-22T15:04:05.000Z"),
            Just("9999999999999999999999999"),
        ]
        .prop_map(Value::from),
        (1usize..3000).prop_map(|n| Value::from("é".repeat(n))),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// How a valid body is spoiled.
#[derive(Debug, Clone)]
enum Spoil {
    /// Field `n % fields` gets the value.
    Replace(usize, Value),
    Remove(usize),
    AddUnknown(String, Value),
    Whole(Value),
}

fn spoil() -> impl Strategy<Value = Spoil> {
    prop_oneof![
        4 => (any::<usize>(), any_json()).prop_map(|(n, v)| Spoil::Replace(n, v)),
        1 => any::<usize>().prop_map(Spoil::Remove),
        1 => ("[a-z_]{1,12}", any_json()).prop_map(|(k, v)| Spoil::AddUnknown(k, v)),
        1 => any_json().prop_map(Spoil::Whole),
    ]
}

fn apply(template: &Value, spoil: &Spoil) -> Value {
    let mut body: Map<String, Value> = template.as_object().cloned().unwrap_or_default();
    let keys: Vec<String> = body.keys().cloned().collect();
    match spoil {
        Spoil::Replace(n, value) => {
            body.insert(keys[n % keys.len()].clone(), value.clone());
        }
        Spoil::Remove(n) => {
            body.remove(&keys[n % keys.len()]);
        }
        Spoil::AddUnknown(key, value) => {
            body.insert(key.clone(), value.clone());
        }
        Spoil::Whole(value) => return value.clone(),
    }
    Value::Object(body)
}

/// Who sends a request type.
#[derive(Clone, Copy)]
enum As {
    Nobody,
    User,
    Admin,
}

struct RequestType {
    path: String,
    who: As,
    keyed: bool,
    template: Value,
}

/// Checks one answer: below 500, the error shape on every non-2xx, and
/// the books untouched unless it succeeded.
fn check(status: u16, body: &Value, changed: bool, what: &str) -> Result<(), TestCaseError> {
    prop_assert!(status < 500, "{what}: {status} {body}");
    if !(200..300).contains(&status) {
        prop_assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{what}: {status} without the error shape: {body}"
        );
        prop_assert!(
            !changed,
            "{what}: refused with {status} but the books changed"
        );
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

#[test]
fn any_json_in_any_field_of_any_request_is_valid_or_a_4xx_that_changes_nothing() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (app, books, user, player, sale) = runtime.block_on(async {
        let mut settings = test_settings().await;
        // Paused, so a purchase accepted earlier cannot settle (and move
        // the books) while a later case is being checked.
        settings.sales.settlement_rate_per_sec = 0;
        let app = spawn_app_with(settings).await;
        let (books, connection) = tokio_postgres::connect(&app.database_url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        let user = app.register("property").await;
        let player = app.create_player(1_000).await;
        let dropped = app.create_player(500).await;
        let sale = app.create_drop(dropped, 1_000_000, 100, None).await["sale_id"]
            .as_i64()
            .expect("sale_id");
        (app, books, user, player, sale)
    });
    let totals = || async {
        let row = books.query_one(BOOK_TOTALS_SQL, &[]).await.expect("totals");
        (0..row.len())
            .map(|i| row.get::<_, i64>(i))
            .collect::<Vec<i64>>()
    };
    let types = [
        RequestType {
            path: "/api/v1/auth/register".into(),
            who: As::Nobody,
            keyed: false,
            template: json!({"username": "prop_user", "password": PASSWORD}),
        },
        RequestType {
            path: "/api/v1/auth/login".into(),
            who: As::Nobody,
            keyed: false,
            template: json!({"username": "property", "password": PASSWORD}),
        },
        RequestType {
            path: "/api/v1/orders".into(),
            who: As::User,
            keyed: true,
            template: json!({"player_id": player, "side": "buy", "quantity": 1,
                             "limit_price_cents": 5_000}),
        },
        RequestType {
            path: format!("/api/v1/sales/{sale}/purchases"),
            who: As::User,
            keyed: true,
            template: json!({"quantity": 1}),
        },
        RequestType {
            path: "/api/v1/admin/players".into(),
            who: As::Admin,
            keyed: false,
            template: json!({"name": "Prop", "team": "Prop FC", "position": "FW",
                             "price_cents": 1_000}),
        },
        RequestType {
            path: "/api/v1/admin/sales".into(),
            who: As::Admin,
            keyed: false,
            template: json!({"player_id": player, "name": "Prop drop", "total_units": 10,
                             "unit_price_cents": 100, "max_per_user": 2,
                             "starts_at": "2026-11-22T15:04:05.000Z"}),
        },
        RequestType {
            path: "/api/v1/admin/users/bulk".into(),
            who: As::Admin,
            keyed: false,
            template: json!({"count": 1, "prefix": "propbulk", "balance_cents": 100}),
        },
        RequestType {
            path: "/api/v1/admin/feed/events".into(),
            who: As::Admin,
            keyed: false,
            template: json!({"event_id": "prop", "match_id": "m", "player_id": player,
                             "kind": "save", "occurred_at": "2026-11-22T15:04:05.000Z",
                             "minute": 3}),
        },
    ];
    let n = std::sync::atomic::AtomicU64::new(0);
    for request in &types {
        let mut runner = TestRunner::new(Config {
            cases: cases(),
            failure_persistence: None,
            ..Config::default()
        });
        let outcome = runner.run(&spoil(), |spoil| {
            let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let body = apply(&request.template, &spoil);
            runtime.block_on(async {
                let before = totals().await;
                let mut sent = app.client.post(app.url(&request.path)).json(&body);
                match request.who {
                    As::Nobody => {}
                    As::User => sent = sent.bearer_auth(&user.token),
                    As::Admin => sent = sent.bearer_auth(ADMIN_TOKEN),
                }
                if request.keyed {
                    sent = sent.header("Idempotency-Key", format!("prop-{n}"));
                }
                let response = sent.send().await.expect("answered");
                let status = response.status().as_u16();
                let answer: Value = response.json().await.unwrap_or(Value::Null);
                let after = totals().await;
                // A 409 business refusal (insufficient_holdings, say) is an
                // outcome stored under its key (API.md): the key count, the
                // last total, may grow; nothing else may.
                let compared = if status == 409 {
                    before.len() - 1
                } else {
                    before.len()
                };
                let changed = after[..compared] != before[..compared];
                check(
                    status,
                    &answer,
                    changed,
                    &format!("{} {body}", request.path),
                )
            })
        });
        if let Err(failure) = outcome {
            panic!("{}: {failure}", request.path);
        }
    }
}

#[test]
fn any_text_as_a_path_id_or_query_parameter_is_answered_below_500() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (app, user) = runtime.block_on(async {
        let app = spawn_app().await;
        let user = app.register("pathprop").await;
        (app, user)
    });
    let templates = [
        "/api/v1/players/{}",
        "/api/v1/players/{}/history",
        "/api/v1/players/{}/events",
        "/api/v1/players/1/history?limit={}",
        "/api/v1/orders?limit={}",
        "/api/v1/events?limit={}",
        "/api/v1/leaderboard?limit={}",
        "/api/v1/sales/{}",
        "/api/v1/sales/{}/purchases",
        "/api/v1/sales/1/purchases/{}",
    ];
    let text = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| format!("{n}0")),
        "[ -~]{0,30}",
        ".{0,20}",
        Just("%00".to_string()),
        Just("1e3".to_string()),
        Just("-0".to_string()),
    ];
    for template in templates {
        let mut runner = TestRunner::new(Config {
            cases: cases(),
            failure_persistence: None,
            ..Config::default()
        });
        let outcome = runner.run(&text, |text| {
            // Percent-encoded, as a client must send it.
            let encoded: String = text
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b == b'-' {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            let path = template.replace("{}", &encoded);
            runtime.block_on(async {
                let response = app.get(&path, Some(&user.token)).await;
                let status = response.status().as_u16();
                let answer: Value = response.json().await.unwrap_or(Value::Null);
                check(status, &answer, false, &path)
            })
        });
        if let Err(failure) = outcome {
            panic!("{template}: {failure}");
        }
    }
}
