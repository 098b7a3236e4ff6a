//! Migrations that move data keep every email: the delivery state moves out of the
//! email's row (20261203000001) and back again; the creation time is copied beside the
//! state (20261204000001) and dropped again.

use std::time::Duration;

use chrono::Utc;
use mailroom::{
    adapters::postgres::{MIGRATOR, PgEmailStore},
    domain::{AddressList, Email, EmailDraft, EmailId, EmailStatus, Rules},
    ports::{
        AfterAttempt, AttemptOutcome, AttemptRecord, Claim, EmailStore, FinishedAttempt, Inserted,
    },
};

use crate::helpers::migrated_store;

/// The newest migration before the delivery state had a table of its own.
const BEFORE_THE_SPLIT: i64 = 20261202000003;
/// The newest migration before the listing's indexes.
const BEFORE_THE_LISTING_INDEXES: i64 = 20261203000001;

fn finished(id: EmailId, after: AfterAttempt, error: Option<&str>) -> FinishedAttempt {
    FinishedAttempt {
        id,
        record: AttemptRecord {
            attempt: 1,
            started_at: Utc::now(),
            outcome: match after {
                AfterAttempt::Sent => AttemptOutcome::Sent,
                _ => AttemptOutcome::Permanent,
            },
            smtp_code: Some(if error.is_some() { 550 } else { 250 }),
            smtp_text: error.unwrap_or("2.0.0 Ok").into(),
            refused: Vec::new(),
            relay: Some("default".into()),
        },
        after,
        error: error.map(str::to_owned),
        suppress: Vec::new(),
    }
}

async fn read_all(store: &PgEmailStore, ids: &[EmailId]) -> Vec<Email> {
    let mut emails = Vec::new();
    for &id in ids {
        emails.push(EmailStore::get(store, id).await.unwrap().expect("kept"));
    }
    emails
}

#[tokio::test]
async fn the_delivery_state_moves_to_its_own_table_and_back_with_every_email() {
    let (_cleanup, db, store) = migrated_store().await;

    // Emails in four states: queued, scheduled, sent, failed with its error.
    let rules = Rules::default();
    let ahead = (Utc::now() + chrono::Duration::days(3)).to_rfc3339();
    let drafts = [None, Some(ahead), None, None].map(|scheduled_at| {
        rules
            .new_email(EmailDraft {
                from: Some("Shop <shop@example.com>".into()),
                to: Some(AddressList::Text("ann@example.com, bob@example.org".into())),
                subject: Some("Moved".into()),
                message: Some("kept as it was".into()),
                tags: vec![("order".into(), "42".into())],
                scheduled_at,
                ..Default::default()
            })
            .unwrap()
    });
    let ids: Vec<EmailId> = store
        .insert(&drafts)
        .await
        .unwrap()
        .into_iter()
        .map(|inserted| match inserted {
            Inserted::Created(email) => email.id,
            other => panic!("a new email is created: {other:?}"),
        })
        .collect();
    let claims = store
        .claim(&ids[2..], Duration::from_secs(60))
        .await
        .unwrap();
    assert!(claims.iter().all(|c| matches!(c, Claim::Claimed(_))));
    store
        .finish_attempts(&[
            finished(ids[2], AfterAttempt::Sent, None),
            finished(ids[3], AfterAttempt::Failed, Some("550 5.1.1 no such user")),
        ])
        .await
        .unwrap();
    let before = read_all(&store, &ids).await;
    let statuses: Vec<EmailStatus> = before.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [
            EmailStatus::Queued,
            EmailStatus::Scheduled,
            EmailStatus::Sent,
            EmailStatus::Failed
        ]
    );

    // Down: one table `emails` again, holding each email's state.
    MIGRATOR.undo(&db, BEFORE_THE_SPLIT).await.unwrap();
    let kinds: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, table_type::text FROM information_schema.tables \
         WHERE table_name IN ('emails', 'email_messages', 'email_deliveries')",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(kinds, [("emails".to_owned(), "BASE TABLE".to_owned())]);
    for email in &before {
        let (status, attempts, last_error, sent, scheduled_at): (
            String,
            i32,
            Option<String>,
            bool,
            Option<chrono::DateTime<Utc>>,
        ) = sqlx::query_as(
            "SELECT status, attempts, last_error, sent_at IS NOT NULL, scheduled_at \
             FROM emails WHERE email_id = $1",
        )
        .bind(email.id.as_uuid())
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(status, email.status.as_str());
        assert_eq!(attempts, email.attempts);
        assert_eq!(last_error, email.last_error);
        assert_eq!(sent, email.sent_at.is_some());
        assert_eq!(scheduled_at, email.scheduled_at);
    }

    // Up again: every email reads back exactly as before.
    MIGRATOR.run(&db).await.unwrap();
    assert_eq!(read_all(&store, &ids).await, before);

    // A message deleted takes its delivery state with it, and only its own.
    sqlx::query("DELETE FROM email_messages WHERE email_id = $1")
        .bind(ids[0].as_uuid())
        .execute(&db)
        .await
        .unwrap();
    let left: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT email_id FROM email_deliveries ORDER BY email_id")
            .fetch_all(&db)
            .await
            .unwrap();
    let mut kept: Vec<uuid::Uuid> = ids[1..].iter().map(EmailId::as_uuid).collect();
    kept.sort();
    assert_eq!(left, kept);
}

#[tokio::test]
async fn the_creation_time_is_copied_beside_each_state_and_lists_by_status() {
    use mailroom::domain::ListQuery;
    let (_cleanup, db, store) = migrated_store().await;
    let rules = Rules::default();
    let drafts: Vec<_> = (0..3)
        .map(|n| {
            rules
                .new_email(EmailDraft {
                    from: Some("shop@example.com".into()),
                    to: Some(AddressList::Text(format!("user{n}@example.com"))),
                    subject: Some(format!("Listed {n}")),
                    message: Some("by status".into()),
                    ..Default::default()
                })
                .unwrap()
        })
        .collect();
    let mut ids = Vec::new();
    // One insert each, so each has a creation time of its own.
    for draft in &drafts {
        match &store.insert(std::slice::from_ref(draft)).await.unwrap()[..] {
            [Inserted::Created(email)] => ids.push(email.id),
            other => panic!("a new email is created: {other:?}"),
        }
    }
    store.claim(&ids, Duration::from_secs(60)).await.unwrap();
    store
        .finish_attempts(&[
            finished(ids[0], AfterAttempt::Sent, None),
            finished(ids[1], AfterAttempt::Failed, Some("550 5.1.1 no such user")),
            finished(ids[2], AfterAttempt::Sent, None),
        ])
        .await
        .unwrap();

    MIGRATOR
        .undo(&db, BEFORE_THE_LISTING_INDEXES)
        .await
        .unwrap();
    MIGRATOR.run(&db).await.unwrap();
    let differing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM email_deliveries d JOIN email_messages m USING (email_id) \
         WHERE d.message_created_at IS DISTINCT FROM m.created_at",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(differing, 0);
    let sent = store
        .list(&ListQuery {
            status: Some(EmailStatus::Sent),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let listed: Vec<EmailId> = sent.items.iter().map(|e| e.id).collect();
    assert_eq!(listed, [ids[2], ids[0]], "the sent ones, newest first");
}
