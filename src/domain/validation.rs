//! The one place where caller input becomes domain values. REST bodies, gRPC requests
//! and NATS events are all turned into an [`EmailDraft`] and checked here by [`Rules`],
//! so the three paths accept and refuse exactly the same things, and every problem is
//! reported at once, each by its path (`cc[2]`, `attachments[0].content`,
//! `headers.X-Campaign`).

use std::{collections::HashSet, time::Duration};

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{
    Address, Attachment, EmailId, Field, FieldPath, Header, Lane, Mailbox, MailboxError, Tags,
    TemplateRef, TemplateUse, Violation, Violations,
    mailbox::parse_list,
    message::{
        MAX_ATTACHMENTS, MAX_HEADERS, MAX_TAGS, content_id_problem, content_type_problem,
        filename_problem, guess_content_type, header_name_problem, header_value_problem,
        tag_name_problem, tag_value_problem,
    },
};

/// Most bytes in a message body (the text part, and the HTML part).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Most characters in a subject.
pub const MAX_SUBJECT_CHARS: usize = 255;
/// Most characters in an idempotency key.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// How a caller wrote a list of addresses: one string in header form
/// (`a@x.example, "Doe, Jo" <jo@y.example>`), or one mailbox per item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressList {
    Text(String),
    Items(Vec<String>),
}

/// An attachment's bytes as they arrived: base64 text (REST, NATS) or raw (gRPC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentInput {
    Base64(String),
    Bytes(Bytes),
}

/// An attachment as a caller asked for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachmentDraft {
    pub filename: Option<String>,
    pub content: Option<ContentInput>,
    pub content_type: Option<String>,
    pub content_id: Option<String>,
}

/// An email as a caller asked for it, before any check. Missing fields are `None` so
/// every missing field is reported at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmailDraft {
    pub from: Option<String>,
    pub to: Option<AddressList>,
    pub cc: Option<AddressList>,
    pub bcc: Option<AddressList>,
    pub reply_to: Option<AddressList>,
    pub subject: Option<String>,
    /// The text part.
    pub message: Option<String>,
    pub html: Option<String>,
    pub attachments: Vec<AttachmentDraft>,
    /// In the caller's order.
    pub headers: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
    /// When to send it: RFC 3339 with an offset (`2026-12-24T09:00:00+01:00`).
    pub scheduled_at: Option<String>,
    /// `transactional` or `bulk`; transactional when `None`.
    pub lane: Option<String>,
    pub idempotency_key: Option<String>,
    /// Whose idempotency key it is: the name of the API key that sent it (none for
    /// producers on NATS). Two clients may use the same key.
    pub idempotency_client: Option<String>,
    /// The id the email must get (set by the asynchronous REST path, or by a producer of
    /// create events); a new one is generated when `None`.
    pub id: Option<EmailId>,
    /// A stored template to render subject, message and html from (in place of them);
    /// the use case renders it before these rules see the draft.
    pub template: Option<TemplateUse>,
    /// The template the subject and bodies were rendered from, recorded with the email.
    pub rendered_from: Option<TemplateRef>,
}

/// A validated email, ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEmail {
    pub id: EmailId,
    pub from: Mailbox,
    /// Never empty. A recipient given more than once is kept where it first appears
    /// (to, then cc, then bcc).
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub bcc: Vec<Mailbox>,
    pub reply_to: Vec<Mailbox>,
    pub subject: String,
    /// The text part; at least one of `text` and `html` is there.
    pub text: Option<String>,
    pub html: Option<String>,
    pub attachments: Vec<Attachment>,
    pub headers: Vec<Header>,
    pub tags: Tags,
    /// `<emailID@domain>`, the same on every attempt.
    pub message_id: String,
    /// When it is to be sent; at once when `None` or past.
    pub scheduled_at: Option<DateTime<Utc>>,
    pub lane: Lane,
    pub idempotency_key: Option<String>,
    /// The client the key belongs to ('' for none).
    pub idempotency_client: String,
    /// The template it was rendered from.
    pub template: Option<TemplateRef>,
}

/// The limits a deployment sets (`limits.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most recipients (to, cc and bcc together, after duplicates are dropped).
    pub max_recipients: usize,
    /// Most bytes of the message as delivered: every part encoded, headers included.
    pub max_message_bytes: usize,
    /// Most emails in one batch.
    pub max_batch: usize,
    /// How far ahead an email may be scheduled.
    pub max_schedule_ahead: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_recipients: 50,
            max_message_bytes: 10 * 1024 * 1024,
            max_batch: 100,
            max_schedule_ahead: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Checks drafts against the limits, and names Message-IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub limits: Limits,
    /// The domain of Message-IDs whose sender's domain cannot serve (an IP literal):
    /// `smtp.hello_name`, or `mailroom.invalid` when that is not set.
    pub message_id_domain: String,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            limits: Limits::default(),
            message_id_domain: "mailroom.invalid".into(),
        }
    }
}

/// Why a valid draft still cannot be an email: it would be too large to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    /// The size the message would have at least (an upper bound of what is delivered).
    pub size: usize,
    pub limit: usize,
}

/// What is wrong with a draft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    Invalid(Violations),
    TooLarge(TooLarge),
}

impl From<Violations> for Rejected {
    fn from(violations: Violations) -> Self {
        Rejected::Invalid(violations)
    }
}

/// Collects the violations of one draft.
struct Check(Vec<Violation>);

impl Check {
    fn fail(&mut self, path: impl Into<FieldPath>, code: &'static str, message: impl Into<String>) {
        self.0.push(Violation::new(path, code, message.into()));
    }

    fn problem(
        &mut self,
        path: impl Into<FieldPath>,
        problem: Option<(&'static str, &'static str)>,
    ) -> bool {
        match problem {
            Some((code, message)) => {
                self.0.push(Violation::new(path, code, message));
                false
            }
            None => true,
        }
    }
}

impl Rules {
    /// Checks a draft and makes it an email, or says everything wrong with it.
    pub fn new_email(&self, draft: EmailDraft) -> Result<NewEmail, Rejected> {
        let mut check = Check(Vec::new());
        let id = draft.id.unwrap_or_else(EmailId::generate);

        let from = match &draft.from {
            None => {
                check.fail(Field::From, "required", "is required");
                None
            }
            Some(raw) => match Mailbox::parse(raw) {
                Ok(mailbox) => Some(mailbox),
                Err(err) => {
                    check.fail(Field::From, err.code(), err.to_string());
                    None
                }
            },
        };
        let reported = check.0.len();
        let to = addresses(&mut check, Field::To, draft.to.as_ref());
        if to.is_empty() && check.0.len() == reported {
            check.fail(Field::To, "required", "is required: at least one recipient");
        }
        let cc = addresses(&mut check, Field::Cc, draft.cc.as_ref());
        let bcc = addresses(&mut check, Field::Bcc, draft.bcc.as_ref());
        let reply_to = addresses(&mut check, Field::ReplyTo, draft.reply_to.as_ref());
        let (to, cc, bcc) = without_repeats(to, cc, bcc);
        let recipients = to.len() + cc.len() + bcc.len();
        if recipients > self.limits.max_recipients {
            check.fail(
                Field::To,
                "too_many_recipients",
                format!(
                    "to, cc and bcc hold {recipients} recipients; at most {} are allowed",
                    self.limits.max_recipients
                ),
            );
        }

        match &draft.subject {
            None => check.fail(Field::Subject, "required", "is required"),
            Some(subject) => {
                let chars = subject.chars().count();
                if chars == 0 || chars > MAX_SUBJECT_CHARS {
                    check.fail(Field::Subject, "length", "must be 1 to 255 characters");
                } else {
                    check.problem(Field::Subject, header_text_problem(subject));
                }
            }
        }
        if draft.message.is_none() && draft.html.is_none() {
            check.fail(
                Field::Message,
                "required",
                "is required unless html is given: an email needs a text or an HTML body",
            );
        }
        for (field, body) in [(Field::Message, &draft.message), (Field::Html, &draft.html)] {
            if let Some(body) = body {
                check.problem(field, body_problem(body));
            }
        }
        if draft.template.is_some() {
            // A caller of these rules forgot Mailroom::render_template: refuse rather
            // than send the draft's (missing) parts.
            check.fail(
                Field::Template,
                "not_rendered",
                "a template must be rendered before the email is checked",
            );
        }
        if let Some(key) = &draft.idempotency_key {
            let chars = key.chars().count();
            if chars == 0 || chars > MAX_IDEMPOTENCY_KEY_CHARS {
                check.fail(
                    Field::IdempotencyKey,
                    "length",
                    "must be 1 to 255 characters",
                );
            } else {
                check.problem(Field::IdempotencyKey, header_text_problem(key));
            }
        }

        let attachments = attachments(&mut check, draft.attachments, draft.html.is_some());
        let headers = headers(&mut check, draft.headers);
        let tags = tags(&mut check, draft.tags);
        let scheduled_at = match &draft.scheduled_at {
            None => None,
            Some(raw) => match self.schedule_time(raw, Utc::now()) {
                Ok(at) => Some(at),
                Err(violation) => {
                    check.0.push(violation);
                    None
                }
            },
        };

        let lane = match draft.lane.as_deref() {
            None => Lane::default(),
            Some(name) => Lane::parse(name).unwrap_or_else(|| {
                check.fail(Field::Lane, "lane", "must be transactional or bulk");
                Lane::default()
            }),
        };

        Violations::check(check.0)?;
        let from = from.expect("checked above");
        let message_id = self.message_id(id, &from.address);
        let email = NewEmail {
            id,
            from,
            to,
            cc,
            bcc,
            reply_to,
            subject: draft.subject.unwrap_or_default(),
            text: draft.message,
            html: draft.html,
            attachments,
            headers,
            tags,
            message_id,
            scheduled_at,
            lane,
            idempotency_key: draft.idempotency_key,
            idempotency_client: draft.idempotency_client.unwrap_or_default(),
            template: draft.rendered_from,
        };
        let size = delivered_size_bound(&email);
        if size > self.limits.max_message_bytes {
            return Err(Rejected::TooLarge(TooLarge {
                size,
                limit: self.limits.max_message_bytes,
            }));
        }
        Ok(email)
    }

    /// A send time: RFC 3339 with an offset, at most `max_schedule_ahead` from `now`. A
    /// time already past means at once.
    pub fn schedule_time(&self, raw: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Violation> {
        let at = DateTime::parse_from_rfc3339(raw.trim())
            .map_err(|_| {
                Violation::new(
                    Field::ScheduledAt,
                    "datetime",
                    "must be an RFC 3339 date and time with an offset, like 2026-12-24T09:00:00+01:00",
                )
            })?
            .with_timezone(&Utc);
        let ahead = chrono::Duration::from_std(self.limits.max_schedule_ahead)
            .unwrap_or(chrono::Duration::MAX);
        if at - now > ahead {
            return Err(Violation::new(
                Field::ScheduledAt,
                "too_far_ahead",
                format!(
                    "must be at most {} ahead (limits.max_schedule_ahead)",
                    humantime::format_duration(self.limits.max_schedule_ahead)
                ),
            ));
        }
        Ok(at)
    }

    /// `<emailID@domain>`: the sender's domain (in its ASCII form), unless that is an IP
    /// literal.
    fn message_id(&self, id: EmailId, from: &Address) -> String {
        let domain = from.ascii_domain();
        let domain = if domain.starts_with('[') {
            self.message_id_domain.as_str()
        } else {
            domain.as_str()
        };
        format!("<{id}@{domain}>")
    }
}

/// The mailboxes of a list; each bad item is a violation at its index.
fn addresses(check: &mut Check, field: Field, list: Option<&AddressList>) -> Vec<Mailbox> {
    let mut found = Vec::new();
    let bad = |check: &mut Check, index: usize, err: MailboxError| {
        check.fail(
            FieldPath::field(field).index(index),
            err.code(),
            err.to_string(),
        );
    };
    match list {
        None => {}
        Some(AddressList::Text(text)) => match parse_list(text) {
            // One address, as the original service took it: named by the field alone.
            Ok(items) if items.len() == 1 => match items.into_iter().next().expect("one") {
                Ok(mailbox) => found.push(mailbox),
                Err(err) => check.fail(field, err.code(), err.to_string()),
            },
            Ok(items) => {
                for (index, item) in items.into_iter().enumerate() {
                    match item {
                        Ok(mailbox) => found.push(mailbox),
                        Err(err) => bad(check, index, err),
                    }
                }
            }
            Err(err) => check.fail(field, err.code(), err.to_string()),
        },
        Some(AddressList::Items(items)) => {
            for (index, item) in items.iter().enumerate() {
                match Mailbox::parse(item) {
                    Ok(mailbox) => found.push(mailbox),
                    Err(err) => bad(check, index, err),
                }
            }
        }
    }
    found
}

/// Each recipient once, where it first appears: to, then cc, then bcc.
fn without_repeats(
    to: Vec<Mailbox>,
    cc: Vec<Mailbox>,
    bcc: Vec<Mailbox>,
) -> (Vec<Mailbox>, Vec<Mailbox>, Vec<Mailbox>) {
    let mut seen = HashSet::new();
    let mut keep = |list: Vec<Mailbox>| -> Vec<Mailbox> {
        list.into_iter()
            .filter(|mailbox| seen.insert(mailbox.dedup_key()))
            .collect()
    };
    let to = keep(to);
    let cc = keep(cc);
    let bcc = keep(bcc);
    (to, cc, bcc)
}

fn attachments(check: &mut Check, drafts: Vec<AttachmentDraft>, has_html: bool) -> Vec<Attachment> {
    if drafts.len() > MAX_ATTACHMENTS {
        check.fail(
            Field::Attachments,
            "too_many",
            format!("at most {MAX_ATTACHMENTS} attachments are allowed"),
        );
        return Vec::new();
    }
    let mut content_ids = HashSet::new();
    let mut out = Vec::with_capacity(drafts.len());
    for (index, draft) in drafts.into_iter().enumerate() {
        let at = |field| {
            FieldPath::field(Field::Attachments)
                .index(index)
                .then(field)
        };
        let filename = match draft.filename {
            None => {
                check.fail(at(Field::Filename), "required", "is required");
                None
            }
            Some(name) => check
                .problem(at(Field::Filename), filename_problem(&name))
                .then_some(name),
        };
        let content = match draft.content {
            None => {
                check.fail(at(Field::Content), "required", "is required");
                None
            }
            Some(ContentInput::Bytes(bytes)) => Some(bytes),
            Some(ContentInput::Base64(text)) => match decode_base64(&text) {
                Some(bytes) => Some(Bytes::from(bytes)),
                None => {
                    check.fail(
                        at(Field::Content),
                        "base64",
                        "is not base64 (RFC 4648, standard alphabet)",
                    );
                    None
                }
            },
        };
        if content.as_ref().is_some_and(Bytes::is_empty) {
            check.fail(at(Field::Content), "length", "must not be empty");
        }
        let content_type = match draft.content_type {
            Some(content_type) => check
                .problem(at(Field::ContentType), content_type_problem(&content_type))
                .then_some(content_type),
            None => filename.as_deref().map(guess_content_type),
        };
        let content_id = match draft.content_id {
            None => None,
            Some(id) => {
                let id = id
                    .strip_prefix('<')
                    .and_then(|id| id.strip_suffix('>'))
                    .map(str::to_owned)
                    .unwrap_or(id);
                if !check.problem(at(Field::ContentId), content_id_problem(&id)) {
                    None
                } else if !has_html {
                    check.fail(
                        at(Field::ContentId),
                        "inline_without_html",
                        "makes an inline part, which only an html body can show (cid:…)",
                    );
                    None
                } else if !content_ids.insert(id.clone()) {
                    check.fail(
                        at(Field::ContentId),
                        "duplicate",
                        "is given to another attachment too",
                    );
                    None
                } else {
                    Some(id)
                }
            }
        };
        if let (Some(filename), Some(content), Some(content_type)) =
            (filename, content, content_type)
        {
            out.push(Attachment::new(filename, content_type, content_id, content));
        }
    }
    out
}

/// Standard base64, padded or not, with any line breaks and blanks in between ignored
/// (as base64 from a mail or a `base64` command comes).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    if text.bytes().any(|b| b.is_ascii_whitespace()) {
        let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        LENIENT.decode(compact).ok()
    } else {
        LENIENT.decode(text).ok()
    }
}

fn headers(check: &mut Check, drafts: Vec<(String, String)>) -> Vec<Header> {
    if drafts.len() > MAX_HEADERS {
        check.fail(
            Field::Headers,
            "too_many",
            format!("at most {MAX_HEADERS} headers are allowed"),
        );
        return Vec::new();
    }
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(drafts.len());
    for (name, value) in drafts {
        let path = FieldPath::field(Field::Headers).key(&name);
        let name_ok = check.problem(path.clone(), header_name_problem(&name));
        let value_ok = check.problem(path.clone(), header_value_problem(&value));
        if name_ok && !names.insert(name.to_ascii_lowercase()) {
            check.fail(
                path,
                "duplicate",
                "is given twice (header names are case-insensitive)",
            );
            continue;
        }
        if name_ok && value_ok {
            out.push(Header { name, value });
        }
    }
    out
}

fn tags(check: &mut Check, drafts: Vec<(String, String)>) -> Tags {
    if drafts.len() > MAX_TAGS {
        check.fail(
            Field::Tags,
            "too_many",
            format!("at most {MAX_TAGS} tags are allowed"),
        );
        return Tags::new();
    }
    let mut out = Tags::new();
    for (name, value) in drafts {
        let path = FieldPath::field(Field::Tags).key(&name);
        let name_ok = check.problem(path.clone(), tag_name_problem(&name));
        let value_ok = check.problem(path.clone(), tag_value_problem(&value));
        if name_ok && value_ok && out.insert(name, value).is_some() {
            check.fail(path, "duplicate", "is given twice");
        }
    }
    out
}

/// Text that ends up in a mail header: no CR/LF (header injection) and no other control
/// characters.
fn header_text_problem(value: &str) -> Option<(&'static str, &'static str)> {
    if value.contains(['\r', '\n']) {
        return Some(("line_break", "must not contain line breaks (CR or LF)"));
    }
    if value.chars().any(char::is_control) {
        return Some(("control_characters", "must not contain control characters"));
    }
    None
}

/// A message body: at least one character, at most 1 MiB, and no NUL (PostgreSQL text
/// cannot hold it and no mail should carry it).
pub(super) fn body_problem(value: &str) -> Option<(&'static str, &'static str)> {
    if value.is_empty() {
        return Some(("length", "must not be empty"));
    }
    if value.len() > MAX_MESSAGE_BYTES {
        return Some(("too_large", "must be at most 1 MiB (1048576 bytes)"));
    }
    if value.contains('\0') {
        return Some(("nul_character", "must not contain NUL characters"));
    }
    None
}

impl NewEmail {
    /// A digest of what the email says (not its id, nor its Message-ID, which follows from
    /// it), in lowercase hex: two emails with the same digest are the same request.
    pub fn content_digest(&self) -> String {
        let mut hash = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_be_bytes());
            hash.update(bytes);
        };
        field(self.from.to_string().as_bytes());
        for list in [&self.to, &self.cc, &self.bcc, &self.reply_to] {
            field(super::format_list(list).as_bytes());
        }
        field(self.subject.as_bytes());
        for body in [&self.text, &self.html] {
            field(body.as_deref().unwrap_or("\0none").as_bytes());
        }
        for attachment in &self.attachments {
            let meta = &attachment.meta;
            field(meta.filename.as_bytes());
            field(meta.content_type.as_bytes());
            field(meta.content_id.as_deref().unwrap_or_default().as_bytes());
            field(meta.sha256.as_bytes());
        }
        for header in &self.headers {
            field(header.name.as_bytes());
            field(header.value.as_bytes());
        }
        for (name, value) in &self.tags {
            field(name.as_bytes());
            field(value.as_bytes());
        }
        field(
            self.scheduled_at
                .map(|at| at.to_rfc3339())
                .unwrap_or_default()
                .as_bytes(),
        );
        // Only when not the default, so digests made before lanes existed still match.
        if self.lane != Lane::default() {
            field(self.lane.as_str().as_bytes());
        }
        hex::encode(hash.finalize())
    }
}

/// Bytes `len` bytes take in base64 with a line break (CRLF) every 76 characters.
fn base64_lines(len: usize) -> usize {
    let chars = len.div_ceil(3) * 4;
    chars + chars.div_ceil(76) * 2
}

/// At least the size of the message as delivered, with every part encoded: base64 for
/// each attachment, and for each body (quoted-printable, when chosen, is never longer);
/// headers counted three times over for their encoding; an allowance for the MIME
/// structure. The delivered message is never larger, so a message within the limit by
/// this count is within it on the wire.
pub fn delivered_size_bound(email: &NewEmail) -> usize {
    const MESSAGE_HEADERS: usize = 1024;
    const PART_OVERHEAD: usize = 256;
    let mailboxes = [&email.to, &email.cc, &email.reply_to]
        .iter()
        .flat_map(|list| list.iter())
        .chain(std::iter::once(&email.from))
        .map(|mailbox| 3 * mailbox.to_string().len() + 4)
        .sum::<usize>();
    let headers = email
        .headers
        .iter()
        .map(|h| h.name.len() + 3 * h.value.len() + 4)
        .sum::<usize>();
    let bodies = [&email.text, &email.html]
        .iter()
        .filter_map(|body| body.as_ref())
        .map(|body| base64_lines(body.len()) + PART_OVERHEAD)
        .sum::<usize>();
    let attachments = email
        .attachments
        .iter()
        .map(|a| {
            base64_lines(a.content.len())
                + PART_OVERHEAD
                + 3 * a.meta.filename.len()
                + a.meta.content_type.len()
                + a.meta.content_id.as_ref().map_or(0, String::len)
        })
        .sum::<usize>();
    MESSAGE_HEADERS + 3 * email.subject.len() + mailboxes + headers + bodies + attachments
}

#[cfg(test)]
mod tests;
