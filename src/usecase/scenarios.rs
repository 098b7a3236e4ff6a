//! The create, delivery and reconciler rules on in-memory ports ([`super::memory`]): each
//! scenario runs in milliseconds, with the store's clock moved by hand instead of
//! waiting for leases and backoffs.

use std::time::Duration;

use crate::{
    domain::{AddressList, EmailDraft, EmailId, EmailStatus, NewEmail, Rules},
    error::Error,
    ports::{AttemptOutcome, SendReason},
};

use super::{
    Delivery,
    memory::{Failure, Harness, permanent, transient},
};

fn new_email(key: Option<&str>, subject: &str) -> NewEmail {
    client_email(None, key, subject)
}

/// An email whose idempotency key belongs to `client`.
fn client_email(client: Option<&str>, key: Option<&str>, subject: &str) -> NewEmail {
    Rules::default()
        .new_email(EmailDraft {
            idempotency_client: client.map(str::to_owned),
            from: Some("sender@example.com".into()),
            to: Some(AddressList::Text("alice@example.com".into())),
            subject: Some(subject.into()),
            message: Some("Hello".into()),
            idempotency_key: key.map(str::to_owned),
            ..Default::default()
        })
        .unwrap()
}

async fn stored(harness: &Harness) -> EmailId {
    let created = harness
        .mailroom
        .create_all(vec![(new_email(None, "Hi"), tracing::Span::none())])
        .await
        .unwrap();
    created.into_iter().next().unwrap().unwrap().email.id
}

async fn deliver(harness: &Harness, id: EmailId) -> Delivery {
    harness.mailroom.deliver(id).await.unwrap()
}

fn statuses(harness: &Harness, id: EmailId) -> Vec<EmailStatus> {
    harness
        .bus
        .published()
        .statuses
        .iter()
        .filter(|event| event.email_id == id)
        .map(|event| event.status)
        .collect()
}

// --- create ----------------------------------------------------------------------------

async fn create_one(harness: &Harness, email: NewEmail) -> crate::error::Result<super::Created> {
    let mut results = harness
        .mailroom
        .create_all(vec![(email, tracing::Span::none())])
        .await
        .unwrap();
    results.pop().unwrap()
}

#[tokio::test]
async fn two_clients_may_use_the_same_idempotency_key() {
    let harness = Harness::new();
    let alpha = create_one(&harness, client_email(Some("alpha"), Some("order-1"), "A"))
        .await
        .unwrap();
    let beta = create_one(&harness, client_email(Some("beta"), Some("order-1"), "B"))
        .await
        .unwrap();
    assert!(!beta.replayed);
    assert_ne!(alpha.email.id, beta.email.id);
    let again = create_one(&harness, client_email(Some("alpha"), Some("order-1"), "A"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.email.id, alpha.email.id);
    let conflict = create_one(&harness, client_email(Some("alpha"), Some("order-1"), "B")).await;
    assert!(matches!(conflict, Err(Error::IdempotencyConflict { .. })));
}

#[tokio::test]
async fn an_idempotency_key_past_its_ttl_creates_a_new_email() {
    let harness = Harness::new();
    let first = create_one(&harness, new_email(Some("order-1"), "Receipt"))
        .await
        .unwrap();
    harness.store.advance(Duration::from_secs(23 * 3600));
    let within = create_one(&harness, new_email(Some("order-1"), "Receipt"))
        .await
        .unwrap();
    assert!(within.replayed, "23 hours on, the key still answers");
    harness.store.advance(Duration::from_secs(2 * 3600));
    let renewed = create_one(&harness, new_email(Some("order-1"), "Other content"))
        .await
        .unwrap();
    assert!(!renewed.replayed);
    assert_ne!(renewed.email.id, first.email.id);
    assert_eq!(harness.store.len(), 2);
}

#[tokio::test]
async fn an_idempotency_key_repeated_inside_one_batch_creates_one_email() {
    let harness = Harness::new();
    let batch = vec![
        (new_email(Some("order-1"), "Receipt"), tracing::Span::none()),
        (new_email(Some("order-1"), "Receipt"), tracing::Span::none()),
    ];
    let results = harness.mailroom.create_all(batch).await.unwrap();
    let first = results[0].as_ref().unwrap();
    let second = results[1].as_ref().unwrap();
    assert!(!first.replayed && second.replayed);
    assert_eq!(first.email.id, second.email.id);
    assert_eq!(harness.store.len(), 1);
    let published = harness.bus.published();
    assert_eq!(published.sends, vec![(first.email.id, SendReason::Created)]);
    assert_eq!(published.statuses.len(), 1, "one queued event");
}

#[tokio::test]
async fn a_key_repeated_in_a_batch_with_other_content_is_a_conflict_for_the_later_email() {
    let harness = Harness::new();
    let batch = vec![
        (new_email(Some("order-2"), "Receipt"), tracing::Span::none()),
        (new_email(Some("order-2"), "Refund"), tracing::Span::none()),
    ];
    let results = harness.mailroom.create_all(batch).await.unwrap();
    let first = results[0].as_ref().unwrap();
    match &results[1] {
        Err(Error::IdempotencyConflict { key, existing }) => {
            assert_eq!((key.as_str(), *existing), ("order-2", first.email.id));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(harness.store.len(), 1);
}

#[tokio::test]
async fn a_store_outage_stores_nothing_and_says_it_is_worth_retrying() {
    let harness = Harness::new();
    harness.store.fail(Some(Failure::Outage));
    let err = harness
        .mailroom
        .create_all(vec![(new_email(None, "Hi"), tracing::Span::none())])
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    harness.store.fail(None);
    assert_eq!(harness.store.len(), 0);
    assert!(harness.bus.published().sends.is_empty());
}

#[tokio::test]
async fn a_lost_send_event_leaves_the_email_stored_for_the_reconciler() {
    let harness = Harness::new();
    harness.bus.set_down(true);
    let id = stored(&harness).await;
    harness.bus.set_down(false);
    assert_eq!(harness.store.email(id).unwrap().status, EmailStatus::Queued);
    assert!(harness.bus.published().sends.is_empty());
    harness.store.advance(Duration::from_secs(120));
    let published = harness
        .mailroom
        .reconcile(Duration::from_secs(60), 100)
        .await
        .unwrap();
    assert_eq!(published, 1);
    assert_eq!(
        harness.bus.published().sends,
        vec![(id, SendReason::Reconciled)]
    );
}

#[tokio::test]
async fn bulk_mail_s_send_events_go_to_the_bulk_lane_when_created_and_when_reconciled() {
    let harness = Harness::new();
    let bulk = NewEmail {
        lane: crate::domain::Lane::Bulk,
        ..new_email(None, "Newsletter")
    };
    let created = create_one(&harness, bulk).await.unwrap();
    assert_eq!(created.email.lane, crate::domain::Lane::Bulk);
    let plain = stored(&harness).await;
    assert_eq!(
        harness.store.email(plain).unwrap().lane,
        crate::domain::Lane::Transactional
    );
    // Both events lost to a crash: the reconciler publishes each in its own lane again.
    harness.store.advance(Duration::from_secs(120));
    harness
        .mailroom
        .reconcile(Duration::from_secs(60), 100)
        .await
        .unwrap();
    let published = harness.bus.published();
    let lane_of = |id: EmailId| -> Vec<crate::domain::Lane> {
        published
            .sends
            .iter()
            .zip(&published.send_lanes)
            .filter(|((sent, _), _)| *sent == id)
            .map(|(_, lane)| *lane)
            .collect()
    };
    assert_eq!(lane_of(created.email.id), [crate::domain::Lane::Bulk; 2]);
    assert_eq!(lane_of(plain), [crate::domain::Lane::Transactional; 2]);
}

#[tokio::test]
async fn a_batch_s_emails_take_the_batch_lane_unless_they_name_one() {
    let harness = Harness::new();
    let mailroom = harness
        .mailroom
        .clone()
        .with_batch_lane(crate::domain::Lane::Bulk);
    let named = EmailDraft {
        lane: Some("transactional".into()),
        ..draft("named@example.com")
    };
    let created = mailroom
        .create_batch(vec![draft("unnamed@example.com"), named], "", None)
        .await
        .unwrap();
    let lanes: Vec<_> = created.emails.iter().map(|email| email.lane).collect();
    assert_eq!(
        lanes,
        [
            crate::domain::Lane::Bulk,
            crate::domain::Lane::Transactional
        ]
    );
}

// --- delivery --------------------------------------------------------------------------

#[tokio::test]
async fn a_transient_failure_defers_the_email_until_its_backoff_then_a_permanent_one_fails_it() {
    let harness = Harness::new();
    harness
        .mailer
        .script([transient("451 4.3.0 busy"), permanent("550 5.7.1 refused")]);
    let id = stored(&harness).await;

    let Delivery::Retry { email, after } = deliver(&harness, id).await else {
        panic!("a transient failure is retried");
    };
    assert_eq!(email.status, EmailStatus::Deferred);
    assert!(
        after > Duration::from_secs(25) && after <= Duration::from_secs(30),
        "{after:?}"
    );

    // Asked again before the backoff is over: nothing is sent.
    assert!(matches!(
        deliver(&harness, id).await,
        Delivery::NotDue { .. }
    ));
    assert_eq!(harness.mailer.sent().len(), 1);

    harness.store.advance(Duration::from_secs(31));
    let Delivery::Failed { email, reason } = deliver(&harness, id).await else {
        panic!("a permanent failure fails the email");
    };
    assert_eq!(email.status, EmailStatus::Failed);
    assert!(reason.contains("refused"), "{reason}");
    let outcomes: Vec<AttemptOutcome> = harness
        .store
        .attempts_of(id)
        .iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [AttemptOutcome::Transient, AttemptOutcome::Permanent]
    );
    assert_eq!(
        statuses(&harness, id),
        [
            EmailStatus::Queued,
            EmailStatus::Sending,
            EmailStatus::Deferred,
            EmailStatus::Sending,
            EmailStatus::Failed
        ]
    );
}

#[tokio::test]
async fn transient_failures_give_up_after_the_retry_budget_and_a_redrive_grants_a_new_one() {
    let harness = Harness::new();
    harness.mailer.script([
        transient("421 one"),
        transient("421 two"),
        transient("421 three"),
        transient("421 four"),
    ]);
    let id = stored(&harness).await;
    for _ in 0..2 {
        assert!(matches!(
            deliver(&harness, id).await,
            Delivery::Retry { .. }
        ));
        harness.store.advance(Duration::from_secs(61));
    }
    let Delivery::Failed { reason, .. } = deliver(&harness, id).await else {
        panic!("the third transient failure of three attempts is final");
    };
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");

    let requeued = harness.mailroom.requeue(id).await.unwrap().unwrap();
    assert_eq!(
        (requeued.status, requeued.retry_base),
        (EmailStatus::Queued, 3)
    );
    assert!(
        matches!(deliver(&harness, id).await, Delivery::Retry { .. }),
        "the first failure after a redrive is retried again"
    );
    harness.store.advance(Duration::from_secs(31));
    assert!(matches!(deliver(&harness, id).await, Delivery::Sent(_)));
    assert_eq!(harness.store.email(id).unwrap().attempts, 5);
}

#[tokio::test]
async fn an_id_repeated_in_one_batch_is_sent_once() {
    let harness = Harness::new();
    let id = stored(&harness).await;
    let deliveries = harness
        .mailroom
        .deliver_all(vec![
            (id, tracing::Span::none()),
            (id, tracing::Span::none()),
        ])
        .await
        .unwrap();
    assert!(matches!(deliveries[0], Delivery::Sent(_)));
    assert!(matches!(deliveries[1], Delivery::NotDue { .. }));
    assert_eq!(harness.mailer.sent(), [id]);
}

#[tokio::test]
async fn an_email_already_sent_is_not_sent_again() {
    let harness = Harness::new();
    let id = stored(&harness).await;
    assert!(matches!(deliver(&harness, id).await, Delivery::Sent(_)));
    let Delivery::AlreadyDone(email) = deliver(&harness, id).await else {
        panic!("a redelivered send event finds the email sent");
    };
    assert_eq!(email.status, EmailStatus::Sent);
    assert_eq!(harness.mailer.sent(), [id]);
    assert!(matches!(
        deliver(&harness, EmailId::generate()).await,
        Delivery::Missing
    ));
}

#[tokio::test]
async fn a_worker_that_lost_its_lease_leaves_the_email_to_the_one_that_took_it_over() {
    let harness = Harness::new();
    let id = stored(&harness).await;
    let hold = harness.mailer.hold_next();
    let slow = {
        let mailroom = harness.mailroom.clone();
        tokio::spawn(async move { mailroom.deliver(id).await })
    };
    hold.entered.notified().await;
    // The slow worker's SMTP exchange outlives its lease; another worker takes over.
    harness.store.advance(Duration::from_secs(61));
    harness.mailer.script([transient("451 try later")]);
    assert!(matches!(
        deliver(&harness, id).await,
        Delivery::Retry { .. }
    ));

    hold.release.notify_one();
    let Delivery::AlreadyDone(email) = slow.await.unwrap().unwrap() else {
        panic!("the slow worker's result is not recorded over the newer attempt");
    };
    assert_eq!((email.status, email.attempts), (EmailStatus::Deferred, 2));
    assert_eq!(
        harness.store.email(id).unwrap().status,
        EmailStatus::Deferred
    );
}

#[tokio::test]
async fn a_store_outage_during_delivery_is_worth_retrying() {
    let harness = Harness::new();
    let id = stored(&harness).await;
    harness.store.fail(Some(Failure::Outage));
    let err = harness.mailroom.deliver(id).await.unwrap_err();
    assert!(err.is_transient());
    harness.store.fail(Some(Failure::Refusal));
    let err = harness.mailroom.deliver(id).await.unwrap_err();
    assert!(!err.is_transient());
    assert!(harness.mailer.sent().is_empty());
}

// --- reconciler ------------------------------------------------------------------------

#[tokio::test]
async fn the_reconciler_republishes_an_overdue_email_once_per_age_and_never_a_finished_one() {
    let harness = Harness::new();
    let waiting = stored(&harness).await;
    let sent = stored(&harness).await;
    assert!(matches!(deliver(&harness, sent).await, Delivery::Sent(_)));
    let age = Duration::from_secs(60);

    assert_eq!(
        harness.mailroom.reconcile(age, 100).await.unwrap(),
        0,
        "not overdue yet"
    );
    harness.store.advance(Duration::from_secs(61));
    assert_eq!(harness.mailroom.reconcile(age, 100).await.unwrap(), 1);
    assert_eq!(
        harness.mailroom.reconcile(age, 100).await.unwrap(),
        0,
        "taken for an age"
    );
    harness.store.advance(Duration::from_secs(61));
    assert_eq!(harness.mailroom.reconcile(age, 100).await.unwrap(), 1);
    let reconciled: Vec<EmailId> = harness
        .bus
        .published()
        .sends
        .iter()
        .filter(|(_, reason)| *reason == SendReason::Reconciled)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(reconciled, [waiting, waiting]);
}

#[tokio::test]
async fn the_reconciler_finds_a_crashed_workers_email_once_its_lease_is_over() {
    let harness = Harness::new();
    let id = stored(&harness).await;
    // A worker claimed it and vanished: the email stays `sending` under its lease.
    let hold = harness.mailer.hold_next();
    let crashed = {
        let mailroom = harness.mailroom.clone();
        tokio::spawn(async move { mailroom.deliver(id).await })
    };
    hold.entered.notified().await;
    crashed.abort();
    let age = Duration::from_secs(60);
    harness.store.advance(Duration::from_secs(100));
    assert_eq!(
        harness.mailroom.reconcile(age, 100).await.unwrap(),
        0,
        "lease + age not over"
    );
    harness.store.advance(Duration::from_secs(30));
    assert_eq!(harness.mailroom.reconcile(age, 100).await.unwrap(), 1);
    assert!(matches!(deliver(&harness, id).await, Delivery::Sent(_)));
}

#[tokio::test]
async fn a_bus_outage_leaves_the_overdue_email_for_the_next_pass() {
    let harness = Harness::new();
    let id = stored(&harness).await;
    harness.store.advance(Duration::from_secs(61));
    harness.bus.set_down(true);
    let age = Duration::from_secs(60);
    assert_eq!(harness.mailroom.reconcile(age, 100).await.unwrap(), 0);
    harness.bus.set_down(false);
    harness.store.advance(Duration::from_secs(61));
    assert_eq!(harness.mailroom.reconcile(age, 100).await.unwrap(), 1);
    assert_eq!(
        harness.bus.published().sends.last(),
        Some(&(id, SendReason::Reconciled))
    );
}

// --- reads -----------------------------------------------------------------------------

#[tokio::test]
async fn a_cache_outage_only_costs_the_detour_through_the_store() {
    let harness = Harness::new();
    let id = stored(&harness).await;
    harness.cache.set_down(true);
    assert_eq!(harness.mailroom.get(id).await.unwrap().id, id);
    harness.cache.set_down(false);
    // The cache holds the email since its creation: a store outage does not hide it.
    harness.store.fail(Some(Failure::Outage));
    assert_eq!(harness.mailroom.get(id).await.unwrap().id, id);
    assert!(
        harness
            .mailroom
            .get(EmailId::generate())
            .await
            .unwrap_err()
            .is_transient()
    );
}

// --- the sending API -------------------------------------------------------------------

fn draft(to: &str) -> EmailDraft {
    EmailDraft {
        from: Some("sender@example.com".into()),
        to: Some(AddressList::Text(to.into())),
        subject: Some("Hello".into()),
        message: Some("Hi".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_batch_with_one_invalid_email_stores_nothing_and_names_it_by_its_place() {
    let harness = Harness::new();
    let drafts = vec![
        draft("a@example.com"),
        draft("not-an-address"),
        draft("c@example.com"),
    ];
    let Err(Error::Validation(violations)) = harness.mailroom.create_batch(drafts, "", None).await
    else {
        panic!("the batch is refused");
    };
    let paths: Vec<String> = violations
        .iter()
        .map(|v| v.path.render(crate::wire::json_name))
        .collect();
    assert_eq!(paths, ["emails[1].to"]);
    assert_eq!(harness.store.len(), 0);
    assert!(harness.bus.published().sends.is_empty());
}

#[tokio::test]
async fn a_batch_key_repeated_with_the_same_emails_replays_and_with_others_conflicts() {
    let harness = Harness::new();
    let batch = || vec![draft("a@example.com"), draft("b@example.com")];
    let first = harness
        .mailroom
        .create_batch(batch(), "", Some("order-7".into()))
        .await
        .unwrap();
    assert!(!first.replayed);
    let again = harness
        .mailroom
        .create_batch(batch(), "", Some("order-7".into()))
        .await
        .unwrap();
    assert!(again.replayed);
    let ids = |emails: &[crate::domain::Email]| emails.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(&again.emails), ids(&first.emails));
    assert_eq!(harness.store.len(), 2);
    let other = harness
        .mailroom
        .create_batch(vec![draft("c@example.com")], "", Some("order-7".into()))
        .await;
    assert!(
        matches!(other, Err(Error::IdempotencyConflict { .. })),
        "{other:?}"
    );
}

#[tokio::test]
async fn a_batch_over_the_limit_is_refused_whole() {
    let harness = Harness::new();
    let drafts = (0..101)
        .map(|i| draft(&format!("r{i}@example.com")))
        .collect();
    let Err(Error::Validation(violations)) = harness.mailroom.create_batch(drafts, "", None).await
    else {
        panic!("101 emails of 100");
    };
    assert_eq!(violations.iter().next().unwrap().code, "too_many");
}

fn in_seconds(seconds: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(seconds)).to_rfc3339()
}

#[tokio::test]
async fn a_scheduled_email_waits_for_its_time_then_goes_the_usual_way() {
    let harness = Harness::new();
    let created = harness
        .mailroom
        .create(EmailDraft {
            scheduled_at: Some(in_seconds(60)),
            ..draft("a@example.com")
        })
        .await
        .unwrap();
    let id = created.email.id;
    assert_eq!(created.email.status, EmailStatus::Scheduled);
    assert!(
        harness.bus.published().sends.is_empty(),
        "no send event before its time"
    );
    assert!(
        matches!(deliver(&harness, id).await, Delivery::NotDue { .. }),
        "not claimable"
    );
    assert_eq!(harness.mailroom.release_due(10).await.unwrap().0, 0);

    harness.store.advance(Duration::from_secs(61));
    assert_eq!(harness.mailroom.release_due(10).await.unwrap().0, 1);
    assert_eq!(
        harness.bus.published().sends,
        vec![(id, SendReason::Created)]
    );
    assert!(matches!(deliver(&harness, id).await, Delivery::Sent(_)));
    assert_eq!(
        statuses(&harness, id),
        [
            EmailStatus::Scheduled,
            EmailStatus::Queued,
            EmailStatus::Sending,
            EmailStatus::Sent
        ]
    );
}

#[tokio::test]
async fn a_time_in_the_past_sends_at_once_and_one_too_far_ahead_is_refused() {
    let harness = Harness::new();
    let created = harness
        .mailroom
        .create(EmailDraft {
            scheduled_at: Some(in_seconds(-5)),
            ..draft("a@example.com")
        })
        .await
        .unwrap();
    assert_eq!(created.email.status, EmailStatus::Queued);
    let err = harness
        .mailroom
        .create(EmailDraft {
            scheduled_at: Some(in_seconds(31 * 24 * 3600)),
            ..draft("a@example.com")
        })
        .await
        .unwrap_err();
    let Error::Validation(violations) = err else {
        panic!("{err:?}");
    };
    assert_eq!(violations.iter().next().unwrap().code, "too_far_ahead");
}

#[tokio::test]
async fn cancel_and_reschedule_work_until_it_is_too_late() {
    let harness = Harness::new();
    let scheduled = |seconds| {
        let mailroom = harness.mailroom.clone();
        async move {
            mailroom
                .create(EmailDraft {
                    scheduled_at: Some(in_seconds(seconds)),
                    ..draft("a@example.com")
                })
                .await
                .unwrap()
                .email
                .id
        }
    };
    let first = scheduled(60).await;
    let moved = harness
        .mailroom
        .reschedule(first, &in_seconds(600))
        .await
        .unwrap();
    assert_eq!(moved.status, EmailStatus::Scheduled);
    harness.store.advance(Duration::from_secs(120));
    assert_eq!(
        harness.mailroom.release_due(10).await.unwrap().0,
        0,
        "moved later"
    );
    let canceled = harness.mailroom.cancel(first).await.unwrap();
    assert_eq!(canceled.status, EmailStatus::Canceled);
    assert!(matches!(
        harness.mailroom.cancel(first).await,
        Err(Error::TooLate {
            status: EmailStatus::Canceled,
            ..
        })
    ));
    assert!(matches!(
        harness.mailroom.reschedule(first, &in_seconds(60)).await,
        Err(Error::TooLate { .. })
    ));
    harness.store.advance(Duration::from_secs(3600));
    assert_eq!(
        harness.mailroom.release_due(10).await.unwrap().0,
        0,
        "never released"
    );

    let sent = stored(&harness).await;
    assert!(matches!(deliver(&harness, sent).await, Delivery::Sent(_)));
    assert!(matches!(
        harness.mailroom.cancel(sent).await,
        Err(Error::TooLate {
            status: EmailStatus::Sent,
            ..
        })
    ));
    assert!(matches!(
        harness.mailroom.cancel(EmailId::generate()).await,
        Err(Error::NotFound(_))
    ));
}

// --- suppression and reports -----------------------------------------------------------

mod suppression {
    use crate::{
        domain::{
            Address, AddressList, EmailDraft, EmailId, EmailStatus, Report, ReportKind,
            ReportedRecipient, Rules, SuppressedAddress, SuppressionReason, Verdict,
        },
        error::Error,
        ports::{AttemptOutcome, RefusedRecipient, SendFailure, SmtpReply, SuppressionStore},
        usecase::{Delivery, ReportOutcome, SuppressionAdded, memory::Harness},
    };

    /// An email to alice and bob, cc carol, bcc dave (all at example.com).
    async fn to_four(harness: &Harness) -> EmailId {
        let new = Rules::default()
            .new_email(EmailDraft {
                from: Some("sender@example.com".into()),
                to: Some(AddressList::Text(
                    "alice@example.com, Bob <BOB@example.com>".into(),
                )),
                cc: Some(AddressList::Text("carol@example.com".into())),
                bcc: Some(AddressList::Text("dave@example.com".into())),
                subject: Some("Hi".into()),
                message: Some("Hello".into()),
                ..Default::default()
            })
            .unwrap();
        super::create_one(harness, new).await.unwrap().email.id
    }

    async fn add(harness: &Harness, address: &str) {
        let added = harness.mailroom.add_suppression(address, None).await;
        assert!(
            matches!(added, Ok(SuppressionAdded::Created(_))),
            "{added:?}"
        );
    }

    fn key(address: &str) -> SuppressedAddress {
        SuppressedAddress::of(&Address::parse(address).unwrap())
    }

    fn refusal(address: &str, code: u16, text: &str) -> RefusedRecipient {
        RefusedRecipient {
            address: address.into(),
            code: Some(code),
            text: text.into(),
            suppressed: None,
        }
    }

    #[tokio::test]
    async fn suppressed_recipients_are_left_out_and_recorded_on_the_attempt() {
        let harness = Harness::new();
        // Any case: the list compares addresses case-insensitively.
        add(&harness, "bob@EXAMPLE.com").await;
        add(&harness, "Dave@example.com").await;
        let id = to_four(&harness).await;

        assert!(matches!(
            harness.mailroom.deliver(id).await.unwrap(),
            Delivery::Sent(_)
        ));
        assert_eq!(
            harness.mailer.envelopes(),
            [vec!["alice@example.com", "carol@example.com"]]
        );
        let attempt = &harness.store.attempts_of(id)[0];
        let dropped: Vec<(&str, Option<&str>)> = attempt
            .refused
            .iter()
            .map(|r| (r.address.as_str(), r.suppressed.as_deref()))
            .collect();
        assert_eq!(
            dropped,
            [
                ("BOB@example.com", Some("manual")),
                ("dave@example.com", Some("manual"))
            ]
        );
    }

    #[tokio::test]
    async fn an_email_whose_every_recipient_is_suppressed_ends_suppressed_unsent() {
        let harness = Harness::new();
        for address in [
            "alice@example.com",
            "bob@example.com",
            "carol@example.com",
            "dave@example.com",
        ] {
            add(&harness, address).await;
        }
        let id = to_four(&harness).await;

        let Delivery::Suppressed(email) = harness.mailroom.deliver(id).await.unwrap() else {
            panic!("nobody to send to");
        };
        assert_eq!(email.status, EmailStatus::Suppressed);
        assert!(harness.mailer.sent().is_empty(), "no SMTP conversation");
        let attempts = harness.store.attempts_of(id);
        assert_eq!(attempts[0].outcome, AttemptOutcome::Suppressed);
        assert_eq!(attempts[0].refused.len(), 4);
        assert_eq!(
            super::statuses(&harness, id),
            [
                EmailStatus::Queued,
                EmailStatus::Sending,
                EmailStatus::Suppressed
            ]
        );
        // Final: a redelivered send event finds nothing to do.
        assert!(matches!(
            harness.mailroom.deliver(id).await.unwrap(),
            Delivery::AlreadyDone(_)
        ));
    }

    #[tokio::test]
    async fn only_refusals_saying_the_mailbox_does_not_exist_suppress() {
        let harness = Harness::new();
        harness.mailer.script([Ok(SmtpReply {
            code: 250,
            text: "2.0.0 OK".into(),
            refused: vec![
                refusal(
                    "BOB@example.com",
                    550,
                    "permanent error (550): 5.1.1 no such user",
                ),
                refusal(
                    "carol@example.com",
                    550,
                    "permanent error (550): 5.7.1 policy",
                ),
                refusal(
                    "dave@example.com",
                    450,
                    "transient error (450): 4.2.1 try later",
                ),
            ],
            relay: None,
        })]);
        let id = to_four(&harness).await;
        assert!(matches!(
            harness.mailroom.deliver(id).await.unwrap(),
            Delivery::Sent(_)
        ));

        let listed: Vec<(String, SuppressionReason, Option<EmailId>)> = harness
            .mailroom
            .suppressions(None, None, 100)
            .await
            .unwrap()
            .0
            .into_iter()
            .map(|e| (e.address.to_string(), e.reason, e.email_id))
            .collect();
        assert_eq!(
            listed,
            [(
                "bob@example.com".to_owned(),
                SuppressionReason::HardBounce,
                Some(id)
            )]
        );
        let entry = harness
            .mailroom
            .suppression("Bob@Example.com")
            .await
            .unwrap();
        assert!(entry.smtp_text.unwrap().contains("5.1.1"));
    }

    #[tokio::test]
    async fn every_recipient_unknown_fails_the_email_with_its_entries_already_there() {
        let harness = Harness::new();
        let refused = vec![
            refusal(
                "alice@example.com",
                550,
                "permanent error (550): 5.1.1 unknown",
            ),
            refusal(
                "BOB@example.com",
                550,
                "permanent error (550): no such user",
            ),
            refusal(
                "carol@example.com",
                553,
                "permanent error (553): 5.1.10 null MX",
            ),
            refusal(
                "dave@example.com",
                550,
                "permanent error (550): 5.1.2 no such host",
            ),
        ];
        harness.mailer.script([Err(SendFailure {
            refused,
            ..SendFailure::permanent(Some(550), "every recipient was refused")
        })]);
        let id = to_four(&harness).await;
        let Delivery::Failed { email, .. } = harness.mailroom.deliver(id).await.unwrap() else {
            panic!("every recipient refused for good");
        };
        assert_eq!(email.status, EmailStatus::Failed);
        let keys: Vec<SuppressedAddress> = ["alice", "bob", "carol", "dave"]
            .iter()
            .map(|name| key(&format!("{name}@example.com")))
            .collect();
        assert_eq!(
            harness.store.suppressed(&keys).await.unwrap().len(),
            4,
            "the entries were written with the attempt"
        );
    }

    fn dsn(email: EmailId, verdicts: &[(&str, Verdict, &str)], digest: &str) -> Report {
        Report {
            kind: ReportKind::DeliveryStatus,
            message_id: Some(format!("{email}@example.com")),
            return_paths: Vec::new(),
            recipients: verdicts
                .iter()
                .map(|(address, verdict, status)| ReportedRecipient {
                    address: Address::parse(address).unwrap(),
                    verdict: *verdict,
                    status: Some((*status).into()),
                    diagnostic: None,
                })
                .collect(),
            digest: digest.into(),
        }
    }

    #[tokio::test]
    async fn a_failed_dsn_bounces_a_sent_email_and_suppresses_once() {
        let harness = Harness::new();
        let id = to_four(&harness).await;
        harness.mailroom.deliver(id).await.unwrap();

        // A delay first: recorded, nothing moves.
        let delayed = dsn(
            id,
            &[("alice@example.com", Verdict::Delayed, "4.4.1")],
            "d1",
        );
        let ReportOutcome::Matched {
            email, suppressed, ..
        } = harness.mailroom.ingest_report(&delayed).await.unwrap()
        else {
            panic!("matched by its Message-ID");
        };
        assert_eq!(email.status, EmailStatus::Sent);
        assert!(suppressed.is_empty());

        let failed = dsn(id, &[("Alice@example.com", Verdict::Failed, "5.1.1")], "f1");
        let ReportOutcome::Matched {
            email,
            suppressed,
            duplicate,
        } = harness.mailroom.ingest_report(&failed).await.unwrap()
        else {
            panic!("matched");
        };
        assert_eq!(email.status, EmailStatus::Bounced);
        assert!(!duplicate);
        assert_eq!(suppressed, [key("alice@example.com")]);
        assert!(email.last_error.unwrap().contains("alice@example.com"));

        let ReportOutcome::Matched { duplicate, .. } =
            harness.mailroom.ingest_report(&failed).await.unwrap()
        else {
            panic!("matched");
        };
        assert!(duplicate, "the same report twice changes nothing");
        let bounced = super::statuses(&harness, id)
            .into_iter()
            .filter(|status| *status == EmailStatus::Bounced)
            .count();
        assert_eq!(bounced, 1, "one email.bounced event");
    }

    #[tokio::test]
    async fn a_complaint_suppresses_and_marks_the_email_complained() {
        let harness = Harness::new();
        let id = to_four(&harness).await;
        harness.mailroom.deliver(id).await.unwrap();
        let mut report = dsn(
            id,
            &[("carol@example.com", Verdict::Complaint, "abuse")],
            "c1",
        );
        report.kind = ReportKind::Complaint;
        let ReportOutcome::Matched { email, .. } =
            harness.mailroom.ingest_report(&report).await.unwrap()
        else {
            panic!("matched");
        };
        assert_eq!(email.status, EmailStatus::Complained);
        let entry = harness
            .mailroom
            .suppression("carol@example.com")
            .await
            .unwrap();
        assert_eq!(entry.reason, SuppressionReason::Complaint);
    }

    #[tokio::test]
    async fn a_report_about_no_email_of_ours_is_unmatched() {
        let harness = Harness::new();
        let mut report = dsn(EmailId::generate(), &[], "u1");
        assert!(matches!(
            harness.mailroom.ingest_report(&report).await.unwrap(),
            ReportOutcome::Unmatched
        ));
        // A Message-ID with our id in it but not the email's own is not a match either.
        let id = to_four(&harness).await;
        report.message_id = Some(format!("{id}@elsewhere.example"));
        assert!(matches!(
            harness.mailroom.ingest_report(&report).await.unwrap(),
            ReportOutcome::Unmatched
        ));
    }

    #[tokio::test]
    async fn manual_entries_are_checked_and_kept_once() {
        let harness = Harness::new();
        let long = "x".repeat(1001);
        for (address, note) in [("not an address", None), ("jo@example.com", Some(long))] {
            let err = harness
                .mailroom
                .add_suppression(address, note)
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Validation(_)), "{err:?}");
        }
        add(&harness, "jo@example.com").await;
        assert!(matches!(
            harness
                .mailroom
                .add_suppression("JO@example.com", Some("again".into()))
                .await
                .unwrap(),
            SuppressionAdded::Existing(entry) if entry.note.is_none()
        ));
        harness
            .mailroom
            .delete_suppression("jo@EXAMPLE.com")
            .await
            .unwrap();
        assert!(matches!(
            harness.mailroom.delete_suppression("jo@example.com").await,
            Err(Error::Missing { .. })
        ));
        assert!(matches!(
            harness.mailroom.suppressions(Some("soft"), None, 10).await,
            Err(Error::Validation(_))
        ));
    }
}

// --- queue gauges ----------------------------------------------------------------------

#[tokio::test]
async fn the_queue_gauges_count_what_waits_and_how_long_the_most_overdue_has() {
    let harness = Harness::new();
    let gauge = |status: &str| {
        harness
            .mailroom
            .metrics()
            .emails_pending
            .with_label_values(&[status])
            .get()
    };
    // Exported from the start, at zero.
    harness.mailroom.observe_queue(1000).await.unwrap();
    assert_eq!(
        (gauge("queued"), gauge("deferred"), gauge("scheduled")),
        (0, 0, 0)
    );
    assert_eq!(harness.mailroom.metrics().oldest_pending.get(), 0.0);

    let first = stored(&harness).await;
    stored(&harness).await;
    harness.mailer.script([transient("451 4.3.0 busy")]);
    deliver(&harness, first).await;
    harness.store.advance(Duration::from_secs(10));
    harness.mailroom.observe_queue(1000).await.unwrap();
    assert_eq!((gauge("queued"), gauge("deferred")), (1, 1));
    let waited = harness.mailroom.metrics().oldest_pending.get();
    // The queued one was due when created, 10 s ago on the store's clock; the deferred
    // one is not due for another 20 s, so it has not waited yet.
    assert!((9.0..20.0).contains(&waited), "{waited}");

    // Counting reads at most the limit: a lower bound past it.
    harness.mailroom.observe_queue(1).await.unwrap();
    assert_eq!(gauge("queued") + gauge("deferred"), 1);

    harness.store.fail(Some(Failure::Outage));
    assert!(harness.mailroom.observe_queue(1000).await.is_err());
}
