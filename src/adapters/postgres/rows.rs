//! How an email is laid out in its row: mailboxes in header form, the optional parts as
//! NULL-able columns (JSON for the structured ones), the text part as '' when there is
//! none. Rows written by older versions read back too (a bare address is a header form
//! of one mailbox; a missing Message-ID is the one those versions sent).

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use crate::{
    domain::{
        AttachmentMeta, Email, Header, Lane, Mailbox, NewEmail, Tags, TemplateRef, format_list,
        parse_list,
    },
    error::{Error, Result},
};

/// The columns of an [`EmailRow`], as a literal so queries stay `&'static str`. They are
/// read from the view `emails` or, after an update of `email_deliveries d`, from it and
/// `email_messages m` joined: either way under the alias `m` for `email_id`, which both
/// tables have, and for `created_at`, the message's.
macro_rules! columns {
    () => {
        "m.email_id, address_from, address_to, address_cc, address_bcc, reply_to, subject, \
         message, html, headers, tags, attachments, message_id, scheduled_at, status, attempts, \
         retry_base, last_error, idempotency_key, idempotency_client, m.created_at, updated_at, \
         sent_at, next_attempt_at, template, lane"
    };
}
pub(super) use columns;

#[derive(sqlx::FromRow)]
pub(super) struct EmailRow {
    email_id: Uuid,
    address_from: String,
    address_to: String,
    address_cc: Option<String>,
    address_bcc: Option<String>,
    reply_to: Option<String>,
    subject: String,
    message: String,
    html: Option<String>,
    headers: Option<Json<Vec<Header>>>,
    tags: Option<Json<Tags>>,
    attachments: Option<Json<Vec<AttachmentMeta>>>,
    message_id: Option<String>,
    scheduled_at: Option<DateTime<Utc>>,
    status: String,
    attempts: i32,
    retry_base: i32,
    last_error: Option<String>,
    idempotency_key: Option<String>,
    idempotency_client: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
    next_attempt_at: Option<DateTime<Utc>>,
    template: Option<Json<TemplateRef>>,
    lane: String,
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Internal(anyhow::anyhow!("a stored email cannot be read: {what}"))
}

/// Mailboxes stored in header form (written by [`Columns`], so they parse).
fn mailboxes(text: Option<String>) -> Result<Vec<Mailbox>> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    parse_list(&text)
        .map_err(|err| corrupt(format!("{text:?}: {err}")))?
        .into_iter()
        .map(|item| item.map_err(|err| corrupt(format!("{text:?}: {err}"))))
        .collect()
}

impl TryFrom<EmailRow> for Email {
    type Error = Error;

    fn try_from(row: EmailRow) -> Result<Self> {
        let from = Mailbox::parse(&row.address_from)
            .map_err(|err| corrupt(format!("{:?}: {err}", row.address_from)))?;
        Ok(Email {
            id: row.email_id.into(),
            from,
            to: mailboxes(Some(row.address_to))?,
            cc: mailboxes(row.address_cc)?,
            bcc: mailboxes(row.address_bcc)?,
            reply_to: mailboxes(row.reply_to)?,
            subject: row.subject,
            text: Some(row.message).filter(|m| !m.is_empty()),
            html: row.html,
            attachments: row.attachments.map(|j| j.0).unwrap_or_default(),
            headers: row.headers.map(|j| j.0).unwrap_or_default(),
            tags: row.tags.map(|j| j.0).unwrap_or_default(),
            message_id: row
                .message_id
                .unwrap_or_else(|| format!("<{}@mailroom>", row.email_id)),
            scheduled_at: row.scheduled_at,
            lane: Lane::parse(&row.lane).ok_or_else(|| corrupt(format!("lane {:?}", row.lane)))?,
            template: row.template.map(|j| j.0),
            status: row.status.parse().map_err(corrupt)?,
            attempts: row.attempts,
            retry_base: row.retry_base,
            last_error: row.last_error,
            idempotency_key: row.idempotency_key,
            idempotency_client: row.idempotency_client,
            created_at: row.created_at,
            updated_at: row.updated_at,
            sent_at: row.sent_at,
            next_attempt_at: row.next_attempt_at,
        })
    }
}

/// What PostgreSQL decides when it stores a new email: its times (by its clock, and
/// `scheduled_at` to its microsecond precision) and whether it waits as `scheduled`. The rest of the row is the new email as given, so
/// the insert answers these columns only and the email is made from both.
#[derive(sqlx::FromRow)]
pub(super) struct InsertedRow {
    email_id: Uuid,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    next_attempt_at: Option<DateTime<Utc>>,
    scheduled_at: Option<DateTime<Utc>>,
}

impl InsertedRow {
    /// The stored email: `new` (whose row this is) as PostgreSQL stored it.
    pub fn email(self, new: &NewEmail) -> Result<Email> {
        debug_assert_eq!(self.email_id, new.id.as_uuid());
        let mut email = Email::queued(new, self.created_at);
        email.status = self.status.parse().map_err(corrupt)?;
        email.updated_at = self.updated_at;
        email.next_attempt_at = self.next_attempt_at;
        email.scheduled_at = self.scheduled_at;
        Ok(email)
    }

    pub fn id(&self) -> Uuid {
        self.email_id
    }
}

/// New emails as the column arrays of one `INSERT … SELECT * FROM UNNEST(…)`.
#[derive(Default)]
pub(super) struct Columns {
    pub ids: Vec<Uuid>,
    pub from: Vec<String>,
    pub to: Vec<String>,
    pub cc: Vec<Option<String>>,
    pub bcc: Vec<Option<String>>,
    pub reply_to: Vec<Option<String>>,
    pub subject: Vec<String>,
    pub message: Vec<String>,
    pub html: Vec<Option<String>>,
    pub headers: Vec<Option<Json<Vec<Header>>>>,
    pub tags: Vec<Option<Json<Tags>>>,
    pub attachments: Vec<Option<Json<Vec<AttachmentMeta>>>>,
    pub message_id: Vec<String>,
    pub scheduled_at: Vec<Option<DateTime<Utc>>>,
    pub idempotency_key: Vec<Option<String>>,
    pub idempotency_client: Vec<String>,
    pub template: Vec<Option<Json<TemplateRef>>>,
    pub lane: Vec<&'static str>,
}

impl Columns {
    pub fn of<'a>(emails: impl IntoIterator<Item = &'a NewEmail>) -> Self {
        let mut columns = Columns::default();
        let list = |mailboxes: &[Mailbox]| (!mailboxes.is_empty()).then(|| format_list(mailboxes));
        for email in emails {
            columns.ids.push(email.id.as_uuid());
            columns.from.push(email.from.to_string());
            columns.to.push(format_list(&email.to));
            columns.cc.push(list(&email.cc));
            columns.bcc.push(list(&email.bcc));
            columns.reply_to.push(list(&email.reply_to));
            columns.subject.push(email.subject.clone());
            columns.message.push(email.text.clone().unwrap_or_default());
            columns.html.push(email.html.clone());
            columns
                .headers
                .push((!email.headers.is_empty()).then(|| Json(email.headers.clone())));
            columns
                .tags
                .push((!email.tags.is_empty()).then(|| Json(email.tags.clone())));
            columns.attachments.push(
                (!email.attachments.is_empty())
                    .then(|| Json(email.attachments.iter().map(|a| a.meta.clone()).collect())),
            );
            columns.message_id.push(email.message_id.clone());
            columns.scheduled_at.push(email.scheduled_at);
            columns.idempotency_key.push(email.idempotency_key.clone());
            columns
                .idempotency_client
                .push(email.idempotency_client.clone());
            columns.template.push(email.template.clone().map(Json));
            columns.lane.push(email.lane.as_str());
        }
        columns
    }
}
