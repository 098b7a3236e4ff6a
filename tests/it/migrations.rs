//! Migrations that move data keep every email: the delivery state moves out of the
//! email's row (20261203000001) and back again.

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
