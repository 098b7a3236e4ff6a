//! Listings and searches give exactly what a plain reading of the table gives, whichever
//! way the store finds the newest matches (src/adapters/postgres/newest.rs): every
//! combination of filters, every page by cursor, every search page and count, with the
//! default probes and with tiny ones that send each query down each way.
//!
//! The table: a burst of emails in the newest hour that share none of the old emails'
//! words, and older emails spread over three weeks, some created at the same instant
//! (so the id decides their order).

use std::collections::HashSet;

use chrono::{DateTime, Duration, DurationRound, Utc};
use mailroom::{
    adapters::postgres::{PgEmailStore, Probes},
    domain::{Cursor, Email, EmailStatus, ListQuery, SearchQuery},
    ports::EmailStore,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{migrated_database, migrated_store};

/// Fails with where `got` first differs from `want`, rather than both lists whole.
fn assert_same(got: &[Uuid], want: &[Uuid], context: &str) {
    if got != want {
        let at = got.iter().zip(want).take_while(|(a, b)| a == b).count();
        panic!(
            "{context}: {} emails, {} expected; the first difference is at {at}",
            got.len(),
            want.len()
        );
    }
}

/// A small deterministic generator (64-bit LCG), so a failure can be replayed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % sides
    }
}

const SENDERS: [&str; 4] = [
    "Billing <Billing@Acme.example>",
    "billing@acme.example",
    "noreply@shop.example",
    "\"Shop, Inc\" <news@shop.example>",
];
const OLD_WORDS: [&str; 8] = [
    "invoice", "invoice", "invoice", "payment", "refund", "garden", "kayak", "walrus",
];

/// Stores the table described above and analyses it; answers the reference time.
async fn fill(db: &PgPool) -> DateTime<Utc> {
    let now = Utc::now().duration_trunc(Duration::hours(1)).unwrap() + Duration::minutes(30);
    let mut dice = Dice(42);
    let (mut ids, mut from, mut to, mut subjects, mut messages) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut tags, mut statuses, mut times) = (Vec::new(), Vec::new(), Vec::new());
    let mut at = now;
    for n in 0..2_100u64 {
        let burst = n < 600;
        // Every tenth email shares its instant with the one before.
        if n % 10 != 0 {
            at -= if burst {
                Duration::seconds(2)
            } else {
                Duration::minutes(20 + dice.roll(20) as i64)
            };
        }
        ids.push(Uuid::new_v4());
        times.push(at);
        from.push(SENDERS[dice.roll(4) as usize].to_owned());
        let first = format!("user{}@example.com", dice.roll(30));
        to.push(match dice.roll(3) {
            0 => first,
            1 => format!("\"Doe, Jo\" <{first}>, other{}@example.org", dice.roll(5)),
            _ => format!("Someone <{first}>"),
        });
        let mut words: Vec<&str> = (0..6)
            .map(|_| {
                if burst {
                    ["burst", "shipped", "order"][dice.roll(3) as usize]
                } else {
                    OLD_WORDS[dice.roll(8) as usize]
                }
            })
            .collect();
        if dice.roll(20) == 0 {
            words.push("mixed");
        }
        subjects.push(format!("Note {n}"));
        messages.push(words.join(" "));
        tags.push(match dice.roll(10) {
            0..=2 => Some(serde_json::json!({"campaign": format!("c{}", dice.roll(2))})),
            3 => Some(serde_json::json!({"plan": "x"})),
            _ => None,
        });
        statuses.push(
            match dice.roll(40) {
                0..=2 => "failed",
                3 => "canceled",
                4 => "queued",
                5 => "deferred",
                6 => "sending",
                _ => "sent",
            }
            .to_owned(),
        );
    }
    sqlx::query(
        "WITH rows AS (SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], \
             $5::text[], $6::jsonb[], $7::text[], $8::timestamptz[]) \
             AS r(id, sender, rcpt, subject, message, tags, status, at)), \
         messages AS (INSERT INTO email_messages (email_id, address_from, address_to, \
             subject, message, tags, created_at) \
             SELECT id, sender, rcpt, subject, message, tags, at FROM rows) \
         INSERT INTO email_deliveries (email_id, status, message_created_at, next_attempt_at) \
         SELECT id, status, at, CASE WHEN status IN ('queued', 'sending', 'deferred') \
             THEN now() END FROM rows",
    )
    .bind(&ids)
    .bind(&from)
    .bind(&to)
    .bind(&subjects)
    .bind(&messages)
    .bind(&tags)
    .bind(&statuses)
    .bind(&times)
    .execute(db)
    .await
    .unwrap();
    sqlx::raw_sql("ANALYZE email_messages; ANALYZE email_deliveries")
        .execute(db)
        .await
        .unwrap();
    now
}

/// Every email, newest first, read plainly.
async fn everything(db: &PgPool, store: &PgEmailStore) -> Vec<Email> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT email_id FROM email_messages ORDER BY created_at DESC, email_id DESC",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let mut all = Vec::with_capacity(ids.len());
    for id in ids {
        all.push(store.get(id.into()).await.unwrap().expect("a stored email"));
    }
    all
}

/// The emails whose words match `text`, as PostgreSQL reads the stored search vector.
async fn matching_words(db: &PgPool, text: &str) -> HashSet<Uuid> {
    sqlx::query_scalar(
        "SELECT email_id FROM email_messages \
         WHERE search @@ websearch_to_tsquery('english', $1)",
    )
    .bind(text)
    .fetch_all(db)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// What the listing `query` (its first page) should hold in all, newest first.
async fn expected(db: &PgPool, all: &[Email], query: &ListQuery) -> Vec<Uuid> {
    let words = match &query.search {
        Some(text) => Some(matching_words(db, text).await),
        None => None,
    };
    // The filters as the domain defines them (the store under test does not use this),
    // the words as PostgreSQL reads them.
    all.iter()
        .filter(|e| query.admits(e))
        .filter(|e| words.as_ref().is_none_or(|w| w.contains(&e.id.as_uuid())))
        .map(|e| e.id.as_uuid())
        .collect()
}

fn listings(now: DateTime<Utc>) -> Vec<ListQuery> {
    let q = ListQuery {
        limit: 7,
        ..Default::default()
    };
    let tag = |name: &str, value: &str| Some((name.to_owned(), value.to_owned()));
    let text = |t: &str| Some(t.to_owned());
    vec![
        q.clone(),
        ListQuery {
            limit: 1,
            ..q.clone()
        },
        ListQuery {
            status: Some(EmailStatus::Sent),
            ..q.clone()
        },
        ListQuery {
            status: Some(EmailStatus::Failed),
            ..q.clone()
        },
        ListQuery {
            status: Some(EmailStatus::Queued),
            ..q.clone()
        },
        ListQuery {
            tag: tag("campaign", "c1"),
            ..q.clone()
        },
        ListQuery {
            tag: tag("plan", "x"),
            limit: 100,
            ..q.clone()
        },
        ListQuery {
            to: text("user7@example.com"),
            ..q.clone()
        },
        ListQuery {
            to: text("other3@example.org"),
            status: Some(EmailStatus::Sent),
            ..q.clone()
        },
        ListQuery {
            from: text("billing@acme.example"),
            ..q.clone()
        },
        ListQuery {
            from: text("news@shop.example"),
            status: Some(EmailStatus::Failed),
            ..q.clone()
        },
        ListQuery {
            from: text("nobody@nowhere.example"),
            ..q.clone()
        },
        ListQuery {
            created_after: Some(now - Duration::days(10)),
            created_before: Some(now - Duration::days(3)),
            ..q.clone()
        },
        ListQuery {
            search: text("invoice"),
            ..q.clone()
        },
        ListQuery {
            search: text("walrus"),
            status: Some(EmailStatus::Sent),
            limit: 20,
            ..q.clone()
        },
        ListQuery {
            search: text("burst"),
            ..q.clone()
        },
        ListQuery {
            search: text("mixed"),
            ..q.clone()
        },
        ListQuery {
            search: text("refund -payment"),
            tag: tag("campaign", "c0"),
            created_before: Some(now - Duration::days(2)),
            ..q.clone()
        },
        ListQuery {
            search: text("invoice"),
            to: text("user3@example.com"),
            created_after: Some(now - Duration::days(14)),
            ..q.clone()
        },
        ListQuery {
            search: text("nothing-matches-this"),
            ..q
        },
    ]
}

/// Probes that send queries down each way: the defaults; never reading all matches and
/// walking a handful of rows, so the hours and days are read, as spans of few matches,
/// as dense spans walked through, and as dense spans read whole once the walk's budget
/// is spent; reading all when the planner expects any number, overflowing at once (so
/// the other ways take over); reading all.
fn probe_sets() -> [Probes; 6] {
    let by_spans = Probes {
        read_all_expected: -1.0,
        read_all_max: 0,
        walk_rows: 3,
        walk_max_rows: 10,
        span_max: 100_000,
        dense_walk_max: 100_000,
    };
    [
        Probes::default(),
        by_spans,
        Probes {
            span_max: 3,
            ..by_spans
        },
        Probes {
            span_max: 3,
            dense_walk_max: 6,
            ..by_spans
        },
        Probes {
            read_all_expected: f64::INFINITY,
            read_all_max: 4,
            walk_rows: 5,
            walk_max_rows: 40,
            ..Probes::default()
        },
        Probes {
            read_all_expected: f64::INFINITY,
            read_all_max: 100_000,
            ..Probes::default()
        },
    ]
}

#[tokio::test]
async fn every_listing_and_every_page_is_what_a_plain_read_gives_whichever_way_is_taken() {
    let (_cleanup, db, store) = migrated_store().await;
    let now = fill(&db).await;
    let all = everything(&db, &store).await;
    for probes in probe_sets() {
        let store = store.clone().with_probes(probes);
        for query in listings(now) {
            let want = expected(&db, &all, &query).await;
            let mut got = Vec::new();
            let mut cursor: Option<Cursor> = None;
            loop {
                let page = store
                    .list(&ListQuery {
                        cursor,
                        ..query.clone()
                    })
                    .await
                    .unwrap();
                assert!(page.items.len() <= query.limit as usize);
                got.extend(page.items.iter().map(|e| e.id.as_uuid()));
                match page.next {
                    Some(next) => {
                        assert_eq!(page.items.len(), query.limit as usize, "{query:?}");
                        cursor = Some(next);
                    }
                    None => break,
                }
                assert!(
                    got.len() <= want.len(),
                    "{probes:?} {query:?}: more than expected"
                );
            }
            assert_same(&got, &want, &format!("{probes:?} {query:?}"));
        }
    }
}

#[tokio::test]
async fn every_search_page_and_count_is_what_a_plain_read_gives_whichever_way_is_taken() {
    let (_cleanup, db, store) = migrated_store().await;
    fill(&db).await;
    let all = everything(&db, &store).await;
    // A small count limit, so counts stop short and deep pages walk.
    let limit = 40;
    let store = PgEmailStore::new(db.clone(), limit, std::time::Duration::from_secs(86_400));
    for probes in probe_sets() {
        let store = store.clone().with_probes(probes);
        for text in [
            "invoice",
            "walrus",
            "burst",
            "mixed -invoice",
            "\"shipped order\"",
            "",
            "nothing-at-all",
        ] {
            let words = (!text.is_empty()).then(|| text.to_owned());
            let want: Vec<Uuid> = match &words {
                Some(text) => {
                    let matching = matching_words(&db, text).await;
                    all.iter()
                        .map(|e| e.id.as_uuid())
                        .filter(|id| matching.contains(id))
                        .collect()
                }
                None => all.iter().map(|e| e.id.as_uuid()).collect(),
            };
            for (page, size) in [(1, 5), (2, 5), (8, 5), (9, 5), (12, 5), (1, 100), (3, 30)] {
                let query = SearchQuery {
                    text: words.clone(),
                    page,
                    size,
                };
                let found = store.search(&query).await.unwrap();
                let offset = ((page - 1) * size) as usize;
                let expected: Vec<Uuid> = want
                    .iter()
                    .skip(offset)
                    .take(size as usize)
                    .copied()
                    .collect();
                let got: Vec<Uuid> = found.items.iter().map(|e| e.id.as_uuid()).collect();
                let context = format!("{probes:?} {text:?} page {page} size {size}");
                assert_same(&got, &expected, &context);
                assert_eq!(
                    found.has_more,
                    want.len() > offset + size as usize,
                    "{context}"
                );
                if want.len() <= limit as usize {
                    assert!(found.total_exact, "{context}");
                    assert_eq!(found.total_count, want.len() as i64, "{context}");
                } else {
                    assert!(!found.total_exact, "{context}");
                    assert!(found.total_count >= i64::from(limit), "{context}");
                    assert!(found.total_count <= want.len() as i64, "{context}");
                }
            }
        }
    }
}

/// A listing holds one connection at a time, even when it walks a dense span inside the
/// transaction that reads the spans: on a pool of one it would otherwise wait for
/// itself until the pool's acquire timeout.
#[tokio::test]
async fn a_listing_needs_one_connection_at_a_time() {
    let (_cleanup, _, db) = migrated_database(|settings| {
        settings.database.max_connections = 1;
        settings.database.min_connections = 0;
        settings.database.acquire_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    fill(&db).await;
    // A walk too short to find the page, then spans of the burst, which are dense.
    let dense = Probes {
        read_all_expected: -1.0,
        read_all_max: 0,
        walk_rows: 3,
        walk_max_rows: 3,
        span_max: 3,
        dense_walk_max: 100_000,
    };
    let store = PgEmailStore::new(db.clone(), 40, std::time::Duration::from_secs(86_400))
        .with_probes(dense);
    let page = store
        .list(&ListQuery {
            search: Some("burst".into()),
            limit: 7,
            ..Default::default()
        })
        .await
        .expect("a listing on a pool of one connection");
    assert_eq!(page.items.len(), 7);
}
