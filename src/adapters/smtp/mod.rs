//! SMTP delivery with lettre: pooled connections, `none`/`starttls`/`tls` security, and
//! failures sorted into transient (retry) and permanent (give up). A recipient the
//! server refuses does not stop the others: the message goes to those accepted, and the
//! refusals are reported with the server's replies.

mod message;

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use lettre::{
    AsyncSmtpTransport, Tokio1Executor,
    transport::smtp::{
        PoolConfig,
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
        extension::ClientId,
    },
};
use secrecy::ExposeSecret;
use tokio::sync::Semaphore;

use crate::{
    config::{SmtpSecurity, SmtpSettings},
    domain::{Address, Email, ReturnPath},
    ports::{FailureKind, Mailer, RefusedRecipient, SendFailure, SmtpReply},
};

pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// `smtp.pool_max_size` permits: the sends in flight. lettre's pool does not wait
    /// for a free connection: when all are busy it opens another, sends one message and
    /// closes it (QUIT) if the pool is full, a new connection per message under load.
    /// Sends wait for a permit instead, so every connection is a pooled one.
    connections: Semaphore,
    timeout: Duration,
    /// For the `server.*` attributes of the send span.
    host: String,
    port: u16,
    /// `smtp.return_path`: the VERP envelope sender, if set.
    return_path: Option<ReturnPath>,
}

impl SmtpMailer {
    pub fn new(settings: &SmtpSettings) -> anyhow::Result<Self> {
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            .port(settings.port)
            .timeout(Some(settings.timeout))
            // Room for twice the sends in flight: a connection is put back into the pool
            // by a task of its own, so the send after it may find the pool empty for a
            // moment and open one more, which is then kept rather than closed.
            .pool_config(PoolConfig::new().max_size(settings.pool_max_size.saturating_mul(2)));
        if settings.security != SmtpSecurity::None {
            let mut parameters = TlsParameters::builder(settings.host.clone())
                .dangerous_accept_invalid_certs(!settings.verify_certificates)
                .dangerous_accept_invalid_hostnames(!settings.verify_certificates);
            if !settings.ca_file.is_empty() {
                let pem = std::fs::read(&settings.ca_file)
                    .with_context(|| format!("reading smtp.ca_file {}", settings.ca_file))?;
                let authorities = Certificate::from_pem(&pem).with_context(|| {
                    format!("smtp.ca_file {} holds no PEM certificate", settings.ca_file)
                })?;
                parameters = parameters.add_root_certificate(authorities);
            }
            let parameters = parameters.build_rustls().context("preparing SMTP TLS")?;
            builder = builder.tls(match settings.security {
                SmtpSecurity::Tls => Tls::Wrapper(parameters),
                _ => Tls::Required(parameters),
            });
        }
        if !settings.username.is_empty() {
            builder = builder.credentials(Credentials::new(
                settings.username.clone(),
                settings.password.expose_secret().to_owned(),
            ));
        }
        if !settings.hello_name.is_empty() {
            builder = builder.hello_name(ClientId::Domain(settings.hello_name.clone()));
        }
        Ok(Self {
            transport: builder.build(),
            connections: Semaphore::new(settings.pool_max_size.max(1) as usize),
            timeout: settings.timeout,
            host: settings.host.clone(),
            port: settings.port,
            return_path: settings.return_path()?,
        })
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
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    #[tracing::instrument(
        name = "smtp.send",
        skip_all,
        fields(
            otel.kind = "client",
            server.address = %self.host,
            server.port = self.port,
            email.id = %email.id,
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
        let outgoing = message::build(email, recipients, attachments, self.return_path.as_ref())?;
        // lettre bounds each command; this bounds the whole exchange, so a server that
        // accepts the connection and never answers cannot hold a worker. The wait for a
        // connection counts too: the claim's lease covers one `smtp.timeout`.
        let exchange = async {
            let _connection = self
                .connections
                .acquire()
                .await
                .expect("the semaphore is never closed");
            self.transport
                .send_raw_to_accepted(&outgoing.envelope, &outgoing.bytes)
                .await
        };
        let sent = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                SendFailure::transient(
                    None,
                    format!("SMTP server did not answer within {:?}", self.timeout),
                )
            })?
            .map_err(|err| classify(&err))?;
        let refused: Vec<RefusedRecipient> = sent
            .refused
            .iter()
            .map(|(address, err)| refusal(address, err))
            .collect();
        let Some(reply) = sent.response else {
            return Err(all_refused(refused));
        };
        let code = reply.code().to_string().parse::<u16>().unwrap_or(250);
        tracing::Span::current().record("smtp.code", code);
        if !refused.is_empty() {
            tracing::info!(
                email.id = %email.id,
                refused = refused.len(),
                "sent to the accepted recipients; some were refused"
            );
        }
        Ok(SmtpReply {
            code,
            text: reply.message().collect::<Vec<_>>().join(" "),
            refused,
        })
    }

    async fn ping(&self) -> anyhow::Result<()> {
        let ok = tokio::time::timeout(self.timeout, self.transport.test_connection())
            .await
            .context("SMTP server did not answer in time")??;
        anyhow::ensure!(ok, "SMTP server refused the connection test");
        Ok(())
    }
}
