//! SMTP delivery with lettre through one or more relays: pooled connections,
//! `none`/`starttls`/`tls` security, failures sorted into transient (retry) and permanent
//! (give up), and DKIM signatures on the final message.
//!
//! Relays are tried by priority; relays of equal priority take turns. A relay whose
//! connection fails or times out (no SMTP reply, or a 421) is left out for
//! `smtp.relay_cooldown` and the message goes to the next relay in the same attempt; a
//! relay that answers (250, 4xx, 5xx) has the last word. A cooling relay is still
//! tried, last, so an email is deferred only when every relay has failed it. A
//! recipient the server refuses does not stop the others: the message goes to those
//! accepted, and the refusals are reported with the server's replies.

mod dkim;
mod message;
mod relay;

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use lettre::transport::smtp::client::PartialSend;
use tokio::sync::Semaphore;

pub use dkim::{DkimSigner, dns_record, generate_key};

use crate::{
    config::{DkimSettings, LanesSettings, SmtpSettings},
    domain::{Address, Email, Lane, ReturnPath},
    metrics::Metrics,
    ports::{FailureKind, Mailer, RefusedRecipient, RelayCheck, SendFailure, SmtpReply},
};

use relay::Relay;

pub struct SmtpMailer {
    /// In the order of `smtp.relays`.
    relays: Vec<Relay>,
    /// Turns taken among relays of equal priority.
    turn: AtomicUsize,
    cooldown: Duration,
    timeout: Duration,
    /// `smtp.return_path`: the VERP envelope sender, if set.
    return_path: Option<ReturnPath>,
    dkim: Option<DkimSigner>,
    /// `lanes.*_send_slots`: the sends of each lane in flight, over every relay.
    transactional_slots: Semaphore,
    bulk_slots: Semaphore,
    metrics: Metrics,
}

impl SmtpMailer {
    pub fn new(
        smtp: &SmtpSettings,
        dkim: &DkimSettings,
        lanes: &LanesSettings,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let relays = smtp
            .relays()
            .iter()
            .map(|settings| Relay::new(settings, smtp.timeout))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for relay in &relays {
            metrics.relay_registered(&relay.name);
        }
        Ok(Self {
            relays,
            turn: AtomicUsize::new(0),
            cooldown: smtp.relay_cooldown,
            timeout: smtp.timeout,
            return_path: smtp.return_path()?,
            dkim: DkimSigner::new(dkim)?,
            transactional_slots: Semaphore::new(lanes.transactional_send_slots.max(1)),
            bulk_slots: Semaphore::new(lanes.bulk_send_slots.max(1)),
            metrics,
        })
    }

    /// The relays that take `lane`'s mail in the order this send tries them: those not
    /// cooling down by priority, equal priorities starting at this send's turn; then the
    /// cooling ones, by priority.
    fn order(&self, lane: Lane) -> Vec<&Relay> {
        let now = Instant::now();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let (mut up, mut cooling): (Vec<&Relay>, Vec<&Relay>) = self
            .relays
            .iter()
            .filter(|relay| relay.lane.is_none_or(|kept| kept == lane))
            .partition(|relay| !relay.cooling(now));
        up.sort_by_key(|relay| relay.priority);
        cooling.sort_by_key(|relay| relay.priority);
        let mut order = Vec::with_capacity(self.relays.len());
        for group in up.chunk_by(|a, b| a.priority == b.priority) {
            let first = turn % group.len();
            order.extend(group[first..].iter().chain(&group[..first]));
        }
        order.extend(cooling);
        order
    }

    /// One relay's exchange. The pace is waited for first, outside the timeout (a send
    /// waits its turn, it never fails for it); the wait for a connection and the
    /// exchange are bounded by `smtp.timeout`, so a server that accepts the connection
    /// and never answers cannot hold a worker.
    async fn send_via(
        &self,
        relay: &Relay,
        outgoing: &message::Outgoing,
    ) -> Result<PartialSend, RelayFailure> {
        relay.pace().await;
        let exchange = async {
            let _connection = relay
                .connections
                .acquire()
                .await
                .expect("the semaphore is never closed");
            relay
                .transport
                .send_raw_to_accepted(&outgoing.envelope, &outgoing.bytes)
                .await
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(RelayFailure::Unreachable(SendFailure::transient(
                None,
                format!("SMTP server did not answer within {:?}", self.timeout),
            ))),
            Ok(Err(err)) if unreachable(&err) => Err(RelayFailure::Unreachable(classify(&err))),
            Ok(Err(err)) => Err(RelayFailure::Answered(classify(&err))),
            Ok(Ok(sent)) => Ok(sent),
        }
    }

    /// The message of `email` for `recipients`, signed when its From domain has a key.
    fn outgoing(
        &self,
        email: &Email,
        recipients: &[Address],
        attachments: &[Bytes],
    ) -> Result<message::Outgoing, SendFailure> {
        let mut outgoing =
            message::build(email, recipients, attachments, self.return_path.as_ref())?;
        if let Some(dkim) = &self.dkim {
            let custom: Vec<&str> = email.headers.iter().map(|h| h.name.as_str()).collect();
            let signature = dkim
                .sign(
                    &email.from.address.ascii_domain(),
                    &outgoing.bytes,
                    &custom,
                    chrono::Utc::now().timestamp(),
                )
                .map_err(|err| SendFailure::transient(None, format!("DKIM signing: {err:#}")))?;
            if let Some(signature) = signature {
                let mut signed = signature.into_bytes();
                signed.extend_from_slice(&outgoing.bytes);
                outgoing.bytes = signed;
            }
        }
        Ok(outgoing)
    }
}

/// How one relay's exchange failed.
enum RelayFailure {
    /// No SMTP answer (refused, dropped or silent connection, TLS, a timeout) or a 421:
    /// the relay is out of service, the next one may take the message.
    Unreachable(SendFailure),
    /// The relay answered: its verdict on this message holds.
    Answered(SendFailure),
}

/// Whether an error says the relay is out of service rather than something of the
/// message: no reply code at all, or 421 (service not available, closing).
fn unreachable(err: &lettre::transport::smtp::Error) -> bool {
    match reply_code(err) {
        None => true,
        Some(code) => code == 421,
    }
}

/// The code of a lettre error that is a server reply.
fn reply_code(err: &lettre::transport::smtp::Error) -> Option<u16> {
    err.status()
        .map(|code| code.to_string().parse::<u16>().unwrap_or(0))
}

/// Sorts a lettre error: 5xx replies are permanent; 4xx replies, connection, TLS and
/// network errors and timeouts are worth retrying.
fn classify(err: &lettre::transport::smtp::Error) -> SendFailure {
    let text = err.to_string();
    if err.is_permanent() {
        SendFailure::permanent(reply_code(err), text)
    } else {
        SendFailure::transient(reply_code(err), text)
    }
}

/// A refused recipient, as the attempt records it.
fn refusal(address: &lettre::Address, err: &lettre::transport::smtp::Error) -> RefusedRecipient {
    RefusedRecipient {
        address: address.to_string(),
        code: reply_code(err),
        text: err.to_string(),
        suppressed: None,
    }
}

/// Every recipient refused: a permanent failure when each refusal was, else one worth
/// retrying (a 4xx for any of them).
fn all_refused(refused: Vec<RefusedRecipient>) -> SendFailure {
    let permanent = refused
        .iter()
        .all(|r| r.code.is_some_and(|code| (500..600).contains(&code)));
    let text = format!(
        "every recipient was refused: {}",
        refused
            .iter()
            .map(|r| format!("{} ({})", r.address, r.text))
            .collect::<Vec<_>>()
            .join("; ")
    );
    SendFailure {
        kind: if permanent {
            FailureKind::Permanent
        } else {
            FailureKind::Transient
        },
        code: refused.first().and_then(|r| r.code),
        text,
        refused,
        relay: None,
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    #[tracing::instrument(
        name = "smtp.send",
        skip_all,
        fields(
            otel.kind = "client",
            email.id = %email.id,
            smtp.relay,
            server.address,
            server.port,
            smtp.code,
        ),
        err
    )]
    async fn send(
        &self,
        email: &Email,
        recipients: &[Address],
        attachments: &[Bytes],
    ) -> Result<SmtpReply, SendFailure> {
        let outgoing = self.outgoing(email, recipients, attachments)?;
        // This lane's turn first: bulk mail can hold only its own slots. The wait is
        // bounded like the wait for a connection, so it stays inside the claim's lease:
        // an email that waited longer is deferred, never sent by a worker whose lease
        // has run out.
        let slots = match email.lane {
            Lane::Transactional => &self.transactional_slots,
            Lane::Bulk => &self.bulk_slots,
        };
        let _slot = tokio::time::timeout(self.timeout, slots.acquire())
            .await
            .map_err(|_| {
                SendFailure::transient(
                    None,
                    format!(
                        "no {} send slot came free within {:?} (lanes.{}_send_slots)",
                        email.lane, self.timeout, email.lane
                    ),
                )
            })?
            .expect("the semaphore is never closed");
        let span = tracing::Span::current();
        let mut unreachable = Vec::new();
        for relay in self.order(email.lane) {
            span.record("smtp.relay", relay.name.as_str());
            span.record("server.address", relay.host.as_str());
            span.record("server.port", relay.port);
            let sent = match self.send_via(relay, &outgoing).await {
                Ok(sent) => sent,
                Err(RelayFailure::Answered(failure)) => {
                    relay.warm_up();
                    return Err(failure.via(&relay.name));
                }
                Err(RelayFailure::Unreachable(failure)) => {
                    relay.cool_down(self.cooldown);
                    self.metrics.relay_failed(&relay.name);
                    tracing::warn!(
                        email.id = %email.id,
                        relay = %relay.name,
                        error = %failure.text,
                        "relay unreachable: left out for smtp.relay_cooldown; the next relay, if there is one, is tried"
                    );
                    unreachable.push((relay.name.as_str(), failure));
                    continue;
                }
            };
            relay.warm_up();
            let refused: Vec<RefusedRecipient> = sent
                .refused
                .iter()
                .map(|(address, err)| refusal(address, err))
                .collect();
            let Some(reply) = sent.response else {
                return Err(all_refused(refused).via(&relay.name));
            };
            let code = reply.code().to_string().parse::<u16>().unwrap_or(250);
            span.record("smtp.code", code);
            if !refused.is_empty() {
                tracing::info!(
                    email.id = %email.id,
                    refused = refused.len(),
                    "sent to the accepted recipients; some were refused"
                );
            }
            return Ok(SmtpReply {
                code,
                text: reply.message().collect::<Vec<_>>().join(" "),
                refused,
                relay: Some(relay.name.clone()),
            });
        }
        Err(none_reachable(unreachable))
    }

    async fn check(&self, within: Duration) -> Vec<RelayCheck> {
        let now = Instant::now();
        futures::future::join_all(self.relays.iter().map(|relay| async move {
            let answered = tokio::time::timeout(within, relay.transport.test_connection())
                .await
                .map_err(|_| "no answer in time".to_owned())
                .and_then(|result| result.map_err(|err| err.to_string()))
                .and_then(|ok| {
                    ok.then_some(())
                        .ok_or_else(|| "refused the connection test".to_owned())
                });
            RelayCheck {
                name: relay.name.clone(),
                error: answered.err(),
                cooling_down: relay.cooling(now),
            }
        }))
        .await
    }
}

/// Every relay failed to take the message: worth another attempt later, the reasons
/// named by relay.
fn none_reachable(failures: Vec<(&str, SendFailure)>) -> SendFailure {
    let last = failures.last().map(|(name, _)| name.to_string());
    let text = failures
        .iter()
        .map(|(name, failure)| format!("{name}: {}", failure.text))
        .collect::<Vec<_>>()
        .join("; ");
    let mut failure = SendFailure::transient(None, format!("no relay took the message ({text})"));
    failure.relay = last;
    failure
}
