//! Query plans under load: the statements that move a batch of emails along read those
//! emails by primary key, whatever PostgreSQL's statistics say about the rest of the
//! table.
//!
//! Statistics lag behind a busy table. Analysed while every email was sent, they say no
//! email is queued; a burst of new emails then makes a plan that scans "all the queued
//! emails" look cheap, and every claim of 16 emails read thousands (`make bench` found
//! PostgreSQL spending a fifth to a half of its time in such scans, by load).

use std::time::Duration;

use chrono::Utc;
use mailroom::{
    adapters::postgres::{self, PgEmailStore},
    domain::EmailId,
    ports::{AfterAttempt, AttemptOutcome, AttemptRecord, Claim, EmailStore, FinishedAttempt},
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{eventually, migrated_database, migrated_store};

/// Index scans PostgreSQL has counted on an index.
async fn index_scans(db: &PgPool, index: &str) -> i64 {
    sqlx::query_scalar("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = $1")
        .bind(index)
        .fetch_one(db)
        .await
        .unwrap()
}

/// Rows PostgreSQL has counted as updated in `email_deliveries` (the state that claims
/// and finished attempts change).
async fn rows_updated(db: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'email_deliveries'",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn claiming_and_finishing_a_batch_read_only_its_emails_when_statistics_are_stale() {
    // One connection, so every statement's counters come from one backend.
    let (_cleanup, settings, db) = migrated_database(|settings| {
        settings.database.max_connections = 1;
        settings.database.min_connections = 0;
    })
    .await;

    // Statistics taken while nothing was due, then a burst of queued emails they do not
    // know about.
    sqlx::raw_sql(
        "ALTER TABLE email_messages SET (autovacuum_enabled = false);
         ALTER TABLE email_deliveries SET (autovacuum_enabled = false);
         WITH old AS ( \
             INSERT INTO email_messages (email_id, address_from, address_to, subject, message) \
             SELECT gen_random_uuid(), 'a@example.com', 'b@example.com', 'old', 'old' \
             FROM generate_series(1, 2000) RETURNING email_id) \
         INSERT INTO email_deliveries (email_id, status, attempts, sent_at, next_attempt_at) \
         SELECT email_id, 'sent', 1, now(), NULL FROM old;
         ANALYZE email_messages;
         ANALYZE email_deliveries;
         WITH new AS ( \
             INSERT INTO email_messages (email_id, address_from, address_to, subject, message) \
             SELECT gen_random_uuid(), 'a@example.com', 'b@example.com', 'new', 'new' \
             FROM generate_series(1, 5000) RETURNING email_id) \
         INSERT INTO email_deliveries (email_id) SELECT email_id FROM new;",
    )
    .execute(&db)
    .await
    .unwrap();
    let batch: Vec<Uuid> = (0..16).map(|_| Uuid::new_v4()).collect();
    sqlx::query(
        "WITH batch AS ( \
             INSERT INTO email_messages (email_id, address_from, address_to, subject, message) \
             SELECT id, 'a@example.com', 'b@example.com', 'batch', 'batch' \
             FROM UNNEST($1::uuid[]) id RETURNING email_id) \
         INSERT INTO email_deliveries (email_id) SELECT email_id FROM batch",
    )
    .bind(&batch)
    .execute(&db)
    .await
    .unwrap();

    let store = PgEmailStore::new(db.clone(), 1000, Duration::from_secs(86_400));
    let ids: Vec<EmailId> = batch.iter().copied().map(EmailId::from).collect();
    let claims = store.claim(&ids, Duration::from_secs(60)).await.unwrap();
    assert!(
        claims.iter().all(|c| matches!(c, Claim::Claimed(_))),
        "{claims:?}"
    );
    let finished: Vec<FinishedAttempt> = ids
        .iter()
        .map(|&id| FinishedAttempt {
            id,
            record: AttemptRecord {
                attempt: 1,
                started_at: Utc::now(),
                outcome: AttemptOutcome::Sent,
                smtp_code: Some(250),
                smtp_text: "2.0.0 Ok".into(),
                refused: Vec::new(),
                relay: Some("default".into()),
            },
            after: AfterAttempt::Sent,
            error: None,
            suppress: Vec::new(),
        })
        .collect();
    let sent = store.finish_attempts(&finished).await.unwrap();
    assert_eq!(sent.len(), 16);

    // A backend reports its counters when it exits: close the pool, then wait for the
    // 32 updates (claimed, sent) to show up; the index scans are reported with them.
    db.close().await;
    let stats = postgres::pool(&settings.database).unwrap();
    eventually(
        Duration::from_secs(10),
        "the statement counters",
        || async { rows_updated(&stats).await >= 32 },
    )
    .await;
    assert_eq!(
        index_scans(&stats, "email_deliveries_due_idx").await,
        0,
        "a statement given ids scanned the index of every unfinished email"
    );
    stats.close().await;
}

/// The insert answers the email it stored without reading the row back (PostgreSQL
/// returns only what it decided: times, status): that answer must be the email a read
/// gives, for an email with every part, scheduled or not, in either lane.
#[tokio::test]
async fn an_insert_answers_each_email_exactly_as_a_read_gives_it() {
    use mailroom::{
        domain::{AddressList, AttachmentDraft, ContentInput, EmailDraft, Rules},
        ports::Inserted,
    };
    let (_cleanup, _db, store) = migrated_store().await;
    let rules = Rules::default();
    let full = |scheduled: Option<&str>, lane: &str| {
        rules
            .new_email(EmailDraft {
                from: Some("Zoë Müller <zoe@bücher.example>".into()),
                to: Some(AddressList::Items(vec![
                    "\"Doe, Jo\" <jo@example.com>".into(),
                    "ann@example.com".into(),
                ])),
                cc: Some(AddressList::Text("Carol <carol@example.org>".into())),
                bcc: Some(AddressList::Text("hidden@example.org".into())),
                reply_to: Some(AddressList::Text("Billing <billing@acme.example>".into())),
                subject: Some("Rechnung März".into()),
                message: Some("Hallo".into()),
                html: Some("<p>Hallo <img src=\"cid:logo\"></p>".into()),
                attachments: vec![
                    AttachmentDraft {
                        filename: Some("Rechnung März.pdf".into()),
                        content: Some(ContentInput::Bytes(b"%PDF-1.4".to_vec().into())),
                        content_type: None,
                        content_id: None,
                    },
                    AttachmentDraft {
                        filename: Some("logo.png".into()),
                        content: Some(ContentInput::Bytes(vec![0x89, b'P', b'N', b'G'].into())),
                        content_type: Some("image/png".into()),
                        content_id: Some("logo".into()),
                    },
                ],
                headers: vec![("X-Campaign".into(), "winter".into())],
                tags: vec![("plan".into(), "pro".into())],
                scheduled_at: scheduled.map(str::to_owned),
                lane: Some(lane.into()),
                idempotency_key: Some(format!("key-{}", Uuid::new_v4())),
                idempotency_client: Some("billing".into()),
                ..Default::default()
            })
            .unwrap()
    };
    let ahead = (Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let emails = vec![
        full(None, "transactional"),
        full(Some(&ahead), "bulk"),
        rules
            .new_email(EmailDraft {
                from: Some("a@example.com".into()),
                to: Some(AddressList::Text("b@example.com".into())),
                subject: Some("Plain".into()),
                html: Some("<p>only html</p>".into()),
                ..Default::default()
            })
            .unwrap(),
    ];
    let inserted = store.insert(&emails).await.unwrap();
    assert_eq!(inserted.len(), 3);
    for answer in inserted {
        let Inserted::Created(answered) = answer else {
            panic!("a new email is created: {answer:?}");
        };
        let read = EmailStore::get(&store, answered.id).await.unwrap().unwrap();
        assert_eq!(answered, read);
    }
}

/// An id given twice in one insert (a create event redelivered into the same batch) is
/// stored once, with the state of its first copy: the second copy finds it as existing.
#[tokio::test]
async fn an_id_given_twice_in_one_insert_is_stored_once_with_its_first_state() {
    use mailroom::{
        domain::{AddressList, EmailDraft, EmailStatus, Rules},
        ports::Inserted,
    };
    let (_cleanup, db, store) = migrated_store().await;
    let id = EmailId::generate();
    let draft = |scheduled_at: Option<String>, message: &str| EmailDraft {
        id: Some(id),
        from: Some("a@example.com".into()),
        to: Some(AddressList::Text("b@example.com".into())),
        subject: Some("Twice".into()),
        message: Some(message.into()),
        scheduled_at,
        ..Default::default()
    };
    let ahead = (Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let rules = Rules::default();
    let first = rules
        .new_email(draft(Some(ahead), "the first copy"))
        .unwrap();
    let second = rules.new_email(draft(None, "the second copy")).unwrap();

    let inserted = store.insert(&[first, second]).await.unwrap();
    let [Inserted::Created(created), Inserted::Existing(existing)] = &inserted[..] else {
        panic!("created once, then found: {inserted:?}");
    };
    assert_eq!(created.status, EmailStatus::Scheduled);
    assert_eq!(created.text.as_deref(), Some("the first copy"));
    assert_eq!(created, existing);
    let (messages, deliveries): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM email_messages), (SELECT count(*) FROM email_deliveries)",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((messages, deliveries), (1, 1));
}
