//! The fairness review's queries.

use std::collections::HashMap;

use deadpool_postgres::Pool;

use super::{score, Evidence, Review, ReviewQuery, Suspect};
use crate::error::Unexpected;
use crate::pricing::CORRECTION_SUFFIX;

/// Every fill ahead of an applied, unreverted event on its player that
/// moved the price its way (`$1`: the lag in seconds), one row per fill
/// (its earliest such event). Driven by the events, whose players' fills
/// are found through `orders_player_executed`. A provider's correction (an
/// event withdrawn, `$3` the suffix of its row) counts too: the ground sees
/// a disallowed goal before the feed does.
const AHEAD: &str = "
    SELECT DISTINCT ON (o.id)
           o.id, o.user_id, o.player_id, o.side, o.quantity, o.price_cents, o.executed_at,
           e.event_id, e.kind, e.occurred_at, e.applied_at, e.price_before, e.price_after,
           LEAST(GREATEST(
               CASE WHEN o.side = 'buy' THEN e.price_after::numeric - o.price_cents
                    ELSE o.price_cents::numeric - e.price_after END * o.quantity,
               -9223372036854775808), 9223372036854775807)::bigint AS gain,
           right(e.event_id, length($3::text)) = $3::text AS correction
      FROM feed_events e
      JOIN orders o
        ON o.player_id = e.player_id
       AND o.executed_at >= e.occurred_at - make_interval(secs => $1::float8)
       AND o.executed_at <= e.applied_at
     WHERE e.applied_at IS NOT NULL
       AND e.reverted_by IS NULL
       AND ((o.side = 'buy' AND e.price_after > e.price_before)
         OR (o.side = 'sell' AND e.price_after < e.price_before))
     ORDER BY o.id, e.applied_at";

/// Runs the review.
pub async fn review(pool: &Pool, query: ReviewQuery) -> Result<Review, Unexpected> {
    let client = pool.get().await?;
    let lag = query.lag_seconds as f64;
    // The totals over every account, then each account with fills ahead
    // and at least `min_fills` fills (none: one row of totals and NULLs).
    let rows = client
        .query(
            &format!(
                "WITH ahead AS ({AHEAD}),
                      per_user AS (SELECT user_id, count(*) AS ahead,
                                          GREATEST(LEAST(sum(gain::numeric), 9223372036854775807),
                                                   -9223372036854775808)::bigint AS edge
                                     FROM ahead GROUP BY user_id),
                      fills AS (SELECT user_id, count(*) AS fills
                                  FROM orders GROUP BY user_id),
                      totals AS (SELECT COALESCE(sum(fills), 0)::bigint AS fills FROM fills),
                      ahead_total AS (SELECT count(*) AS ahead FROM ahead)
                 SELECT t.fills, a.ahead, s.user_id, s.username, s.fills, s.ahead, s.edge
                   FROM totals t
                  CROSS JOIN ahead_total a
                   LEFT JOIN (SELECT p.user_id, u.username, f.fills, p.ahead, p.edge
                                FROM per_user p
                                JOIN fills f ON f.user_id = p.user_id
                                JOIN users u ON u.id = p.user_id
                               WHERE f.fills >= $2) s ON true"
            ),
            &[&lag, &query.min_fills, &CORRECTION_SUFFIX],
        )
        .await?;
    let (fills, ahead) = rows
        .first()
        .map_or((0, 0), |row| (row.get::<_, i64>(0), row.get::<_, i64>(1)));
    let base_rate = if fills > 0 {
        ahead as f64 / fills as f64
    } else {
        0.0
    };
    let mut suspects: Vec<Suspect> = rows
        .iter()
        .filter_map(|row| {
            // The lone row of totals when nobody qualifies.
            let user_id = row.get::<_, Option<i64>>(2)?;
            let (account_fills, account_ahead): (i64, i64) = (row.get(4), row.get(5));
            Some(Suspect {
                user_id,
                username: row.get(3),
                fills: account_fills,
                ahead: account_ahead,
                expected: account_fills as f64 * base_rate,
                score: score(account_fills, account_ahead, base_rate),
                edge_cents: row.get(6),
                evidence: Vec::new(),
            })
        })
        .collect();
    suspects.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.edge_cents.cmp(&a.edge_cents))
            .then(a.user_id.cmp(&b.user_id))
    });
    suspects.truncate(usize::try_from(query.limit).unwrap_or(usize::MAX));

    let ids: Vec<i64> = suspects.iter().map(|s| s.user_id).collect();
    let rows = client
        .query(
            &format!(
                "SELECT * FROM ({AHEAD}) ahead WHERE user_id = ANY($2) ORDER BY executed_at DESC, id DESC"
            ),
            &[&lag, &ids, &CORRECTION_SUFFIX],
        )
        .await?;
    let mut evidence: HashMap<i64, Vec<Evidence>> = HashMap::new();
    for row in rows {
        let rows_of_user = evidence.entry(row.get(1)).or_default();
        if rows_of_user.len() < query.evidence {
            rows_of_user.push(Evidence {
                order_id: row.get(0),
                player_id: row.get(2),
                side: row.get(3),
                quantity: row.get(4),
                price_cents: row.get(5),
                executed_at: row.get(6),
                event_id: row.get(7),
                kind: row.get(8),
                occurred_at: row.get(9),
                applied_at: row.get(10),
                price_before_cents: row.get(11),
                price_after_cents: row.get(12),
                gain_cents: row.get(13),
                correction: row.get(14),
            });
        }
    }
    for suspect in &mut suspects {
        suspect.evidence = evidence.remove(&suspect.user_id).unwrap_or_default();
    }
    Ok(Review {
        lag_seconds: query.lag_seconds,
        fills,
        ahead,
        base_rate,
        suspects,
    })
}
