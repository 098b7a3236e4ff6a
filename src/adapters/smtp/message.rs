//! The MIME message of an email, built with lettre, and its envelope.
//!
//! Structure: multipart/mixed (attachments) around multipart/related (inline parts)
//! around multipart/alternative (text and HTML), each level left out when the email does
//! not need it. Display names and the subject are RFC 2047-encoded by lettre when they
//! are not ASCII, file names RFC 2231-encoded, internationalised domains written in
//! punycode. Bcc recipients are in the envelope only, never in a header. The
//! Message-ID is the one made when the email was created, so every attempt carries it.

use bytes::Bytes;
use lettre::{
    Address, Message,
    address::Envelope,
    message::{
        Attachment, Mailbox, MultiPart, SinglePart,
        header::{ContentType, HeaderName, HeaderValue},
    },
};

use crate::{domain, ports::SendFailure};

/// A message ready for the wire: who receives it, and its bytes.
pub struct Outgoing {
    pub envelope: Envelope,
    pub bytes: Vec<u8>,
}

fn refuse(what: impl std::fmt::Display) -> SendFailure {
    SendFailure::permanent(None, format!("cannot build the message: {what}"))
}

fn address(address: &domain::Address) -> Result<Address, SendFailure> {
    Address::new(address.local_part(), address.ascii_domain())
        .map_err(|err| refuse(format!("{address}: {err}")))
}

fn mailbox(mailbox: &domain::Mailbox) -> Result<Mailbox, SendFailure> {
    Ok(Mailbox::new(
        mailbox.name.clone(),
        address(&mailbox.address)?,
    ))
}

/// The text and HTML bodies: one part, or both as alternatives.
fn bodies(email: &domain::Email) -> Result<Content, SendFailure> {
    match (&email.text, &email.html) {
        (Some(text), Some(html)) => Ok(Content::Multi(MultiPart::alternative_plain_html(
            text.clone(),
            html.clone(),
        ))),
        (Some(text), None) => Ok(Content::Single(SinglePart::plain(text.clone()))),
        (None, Some(html)) => Ok(Content::Single(SinglePart::html(html.clone()))),
        (None, None) => Err(refuse("the email has neither a text nor an HTML body")),
    }
}

/// A level of the MIME tree, single or multi.
enum Content {
    Single(SinglePart),
    Multi(MultiPart),
}

impl Content {
    /// This content as the first part of a new multipart of `kind`, then `parts`.
    fn wrapped(self, outer: lettre::message::MultiPartBuilder, parts: Vec<SinglePart>) -> Content {
        let mut multi = match self {
            Content::Single(part) => outer.singlepart(part),
            Content::Multi(multi) => outer.multipart(multi),
        };
        for part in parts {
            multi = multi.singlepart(part);
        }
        Content::Multi(multi)
    }
}

fn attachment_part(
    meta: &domain::AttachmentMeta,
    content: &Bytes,
) -> Result<SinglePart, SendFailure> {
    let content_type = ContentType::parse(&meta.content_type)
        .map_err(|err| refuse(format!("content type {:?}: {err}", meta.content_type)))?;
    let attachment = match &meta.content_id {
        Some(id) => Attachment::new_inline_with_name(id.clone(), meta.filename.clone()),
        None => Attachment::new(meta.filename.clone()),
    };
    Ok(attachment.body(content.to_vec(), content_type))
}

/// Builds the message of `email` for the envelope recipients `recipients`, whose
/// attachments' bytes are `contents`. The envelope sender is `return_path` when set (a
/// VERP address), else the From address.
pub fn build(
    email: &domain::Email,
    recipients: &[domain::Address],
    contents: &[Bytes],
    return_path: Option<&domain::ReturnPath>,
) -> Result<Outgoing, SendFailure> {
    if contents.len() != email.attachments.len() {
        return Err(SendFailure::transient(
            None,
            format!(
                "{} attachment contents for {} attachments",
                contents.len(),
                email.attachments.len()
            ),
        ));
    }
    let mut builder = Message::builder()
        .from(mailbox(&email.from)?)
        .subject(&email.subject)
        .message_id(Some(email.message_id.clone()))
        .date_now();
    for to in &email.to {
        builder = builder.to(mailbox(to)?);
    }
    for cc in &email.cc {
        builder = builder.cc(mailbox(cc)?);
    }
    for reply_to in &email.reply_to {
        builder = builder.reply_to(mailbox(reply_to)?);
    }
    for header in &email.headers {
        let name = HeaderName::new_from_ascii(header.name.clone())
            .map_err(|err| refuse(format!("header {:?}: {err}", header.name)))?;
        builder = builder.raw_header(HeaderValue::new(name, header.value.clone()));
    }
    let recipients = recipients
        .iter()
        .map(address)
        .collect::<Result<Vec<_>, _>>()?;
    let sender = match return_path {
        Some(path) => {
            let verp = path.for_email(email.id);
            verp.parse::<Address>()
                .map_err(|err| refuse(format!("smtp.return_path {verp}: {err}")))?
        }
        None => address(&email.from.address)?,
    };
    let envelope = Envelope::new(Some(sender), recipients)
        .map_err(|err| refuse(format!("the envelope: {err}")))?;
    builder = builder.envelope(envelope.clone());

    let (mut inline, mut attached) = (Vec::new(), Vec::new());
    for (meta, content) in email.attachments.iter().zip(contents) {
        let part = attachment_part(meta, content)?;
        if meta.is_inline() {
            inline.push(part);
        } else {
            attached.push(part);
        }
    }
    let mut content = bodies(email)?;
    if !inline.is_empty() {
        content = content.wrapped(MultiPart::related(), inline);
    }
    if !attached.is_empty() {
        content = content.wrapped(MultiPart::mixed(), attached);
    }
    let message = match content {
        Content::Single(part) => builder.singlepart(part),
        Content::Multi(multi) => builder.multipart(multi),
    }
    .map_err(refuse)?;
    Ok(Outgoing {
        envelope,
        bytes: message.formatted(),
    })
}
