//! The JSON of a new email, as a REST create body and inside a `mail:create` event:
//! `from`, `to`, `cc`, `bcc`, `replyTo` (each list one header-form string or an array of
//! strings), `subject`, `message`, `html`, `attachments` (content in base64), `headers`
//! and `tags`. Unknown fields are refused; every field may be missing, so that the
//! domain's rules report every problem at once.

use std::fmt;

use base64::Engine;
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{self, MapAccess, SeqAccess, Visitor},
    ser::SerializeMap,
};
use utoipa::ToSchema;

use crate::domain::{
    AddressList, AttachmentDraft, ContentInput, EmailDraft, NewEmail, TemplateUse, format_list,
};

/// A new email.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({
    "from": "Acme Billing <billing@acme.example>",
    "to": "alice@example.com",
    "subject": "Welcome",
    "message": "Hello Alice, welcome aboard."
}))]
pub struct CreateEmail {
    /// The sender: `user@domain` or `Name <user@domain>` (the address at most 254
    /// characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = true, example = "Acme Billing <billing@acme.example>")]
    pub from: Option<String>,
    /// Recipients: a header-form list (`a@x.example, "Doe, Jo" <jo@y.example>`) or an
    /// array of mailboxes. To, cc and bcc hold at most `limits.max_recipients` (50)
    /// together; one given twice is sent once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Addresses, required = true)]
    pub to: Option<Addresses>,
    /// Copy recipients, in the same forms as `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Addresses>)]
    pub cc: Option<Addresses>,
    /// Blind-copy recipients: in the envelope, never in the headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Addresses>)]
    pub bcc: Option<Addresses>,
    /// Where replies go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Addresses>)]
    pub reply_to: Option<Addresses>,
    /// 1 to 255 characters, no line breaks or other control characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = true, min_length = 1, max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub subject: Option<String>,
    /// The text part, 1 character to 1 MiB (in UTF-8), without NUL characters. Required
    /// unless `html` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = true, min_length = 1, pattern = r"^[^\u0000]*$")]
    pub message: Option<String>,
    /// The HTML part, 1 character to 1 MiB (in UTF-8), without NUL characters. Inline
    /// images are `cid:` references to attachments with a `contentId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = true, min_length = 1, pattern = r"^[^\u0000]*$")]
    pub html: Option<String>,
    /// Files to attach (at most 100). The whole message as delivered, every part
    /// encoded, is at most `limits.max_message_bytes` (10 MiB), past which the answer is 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = true, max_items = 100)]
    pub attachments: Option<Vec<AttachmentInput>>,
    /// Extra headers (at most 50), such as `List-Unsubscribe` or `X-Campaign`. Not the
    /// ones mailroom writes (From, To, Cc, Bcc, Reply-To, Subject, Date, Message-ID,
    /// MIME-Version, Content-*, Return-Path, Received, DKIM-Signature); values without
    /// line breaks or control characters, at most 998 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    pub headers: Option<Pairs>,
    /// Labels for your own use (at most 10): names of `A-Z a-z 0-9 _ -` (1 to 64),
    /// values of at most 256 printable characters. Returned with the email and carried
    /// on its status events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    pub tags: Option<Pairs>,
    /// When to send it: an RFC 3339 date and time with an offset, at most
    /// `limits.max_schedule_ahead` (30 days) ahead. The email is `scheduled` until then; a
    /// time already past sends it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = true, format = DateTime, example = "2026-12-24T09:00:00+01:00")]
    pub scheduled_at: Option<String>,
    /// `transactional` (the default for one email) or `bulk` (newsletters, campaigns):
    /// the lanes are queued and sent apart, so bulk mail never holds back
    /// transactional mail. In a batch, emails without a lane take `lanes.batch_default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        nullable = true,
        pattern = "^(transactional|bulk)$",
        example = "transactional"
    )]
    pub lane: Option<String>,
    /// A stored template to render `subject`, `message` and `html` from, in place of
    /// them (giving both is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = true)]
    pub template: Option<TemplateInput>,
}

/// The stored template an email is rendered from, and its variables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"name": "welcome", "variables": {"user": {"name": "Alice"}}}))]
pub struct TemplateInput {
    /// The template's name; or give its `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "welcome")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Uuid)]
    pub id: Option<String>,
    /// The version to render; the newest when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub version: Option<i64>,
    /// What the template's variables are: any JSON values, nested as deep as the
    /// template reads them. A variable the template needs and this lacks is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub variables: Option<serde_json::Map<String, serde_json::Value>>,
}

impl From<TemplateInput> for TemplateUse {
    fn from(input: TemplateInput) -> Self {
        TemplateUse {
            name: input.name,
            id: input.id,
            version: input.version,
            variables: input.variables.unwrap_or_default(),
        }
    }
}

/// An attachment; `contentId` makes it an inline part of the HTML (`cid:` + the id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttachmentInput {
    /// A file name without path separators or control characters, 1 to 255 characters.
    #[schema(value_type = String, example = "invoice-2026-12.pdf")]
    pub filename: Option<String>,
    /// The bytes, in base64 (standard alphabet; padding and line breaks optional).
    #[schema(value_type = String, format = Byte, min_length = 1)]
    pub content: Option<String>,
    /// A MIME type; guessed from the file name when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "application/pdf")]
    pub content_type: Option<String>,
    /// Makes the part inline, referred to as `cid:<contentId>` in the HTML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "logo")]
    pub content_id: Option<String>,
}

/// A list of mailboxes: one string in header form, or an array with one mailbox each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Addresses {
    /// `a@x.example, "Doe, Jo" <jo@y.example>`
    Text(String),
    /// `["a@x.example", "Doe, Jo <jo@y.example>"]`
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for Addresses {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AddressesVisitor;

        impl<'de> Visitor<'de> for AddressesVisitor {
            type Value = Addresses;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address list: a string in header form or an array of strings")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Addresses, E> {
                Ok(Addresses::Text(value.to_owned()))
            }

            fn visit_string<E: de::Error>(self, value: String) -> Result<Addresses, E> {
                Ok(Addresses::Text(value))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Addresses, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(Addresses::List(items))
            }
        }

        deserializer.deserialize_any(AddressesVisitor)
    }
}

impl From<Addresses> for AddressList {
    fn from(addresses: Addresses) -> Self {
        match addresses {
            Addresses::Text(text) => AddressList::Text(text),
            Addresses::List(items) => AddressList::Items(items),
        }
    }
}

/// A JSON object of strings, in the order it was written (a repeated name stays, for the
/// rules to refuse).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pairs(pub Vec<(String, String)>);

impl Serialize for Pairs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor;

        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = Pairs;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object whose values are strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some((name, value)) = map.next_entry::<String, String>()? {
                    pairs.push((name, value));
                }
                Ok(Pairs(pairs))
            }
        }

        deserializer.deserialize_map(PairsVisitor)
    }
}

impl CreateEmail {
    /// The draft this body asks for; the domain's rules check it.
    pub fn into_draft(self) -> EmailDraft {
        EmailDraft {
            from: self.from,
            to: self.to.map(Into::into),
            cc: self.cc.map(Into::into),
            bcc: self.bcc.map(Into::into),
            reply_to: self.reply_to.map(Into::into),
            subject: self.subject,
            message: self.message,
            html: self.html,
            attachments: self
                .attachments
                .unwrap_or_default()
                .into_iter()
                .map(|a| AttachmentDraft {
                    filename: a.filename,
                    content: a.content.map(ContentInput::Base64),
                    content_type: a.content_type,
                    content_id: a.content_id,
                })
                .collect(),
            headers: self.headers.unwrap_or_default().0,
            tags: self.tags.unwrap_or_default().0,
            scheduled_at: self.scheduled_at,
            lane: self.lane,
            idempotency_key: None,
            idempotency_client: None,
            id: None,
            template: self.template.map(Into::into),
            rendered_from: None,
        }
    }

    /// The body that asks for this very email again.
    pub fn from_new_email(email: &NewEmail) -> Self {
        let list = |mailboxes: &[crate::domain::Mailbox]| {
            (!mailboxes.is_empty()).then(|| Addresses::Text(format_list(mailboxes)))
        };
        CreateEmail {
            from: Some(email.from.to_string()),
            to: list(&email.to),
            cc: list(&email.cc),
            bcc: list(&email.bcc),
            reply_to: list(&email.reply_to),
            subject: Some(email.subject.clone()),
            message: email.text.clone(),
            html: email.html.clone(),
            attachments: (!email.attachments.is_empty()).then(|| {
                email
                    .attachments
                    .iter()
                    .map(|a| AttachmentInput {
                        filename: Some(a.meta.filename.clone()),
                        content: Some(base64::engine::general_purpose::STANDARD.encode(&a.content)),
                        content_type: Some(a.meta.content_type.clone()),
                        content_id: a.meta.content_id.clone(),
                    })
                    .collect()
            }),
            headers: (!email.headers.is_empty()).then(|| {
                Pairs(
                    email
                        .headers
                        .iter()
                        .map(|h| (h.name.clone(), h.value.clone()))
                        .collect(),
                )
            }),
            tags: (!email.tags.is_empty()).then(|| {
                Pairs(
                    email
                        .tags
                        .iter()
                        .map(|(name, value)| (name.clone(), value.clone()))
                        .collect(),
                )
            }),
            scheduled_at: email
                .scheduled_at
                .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            lane: Some(email.lane.as_str().to_owned()),
            // Already rendered: the event carries the parts (and says where from).
            template: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(json: &str) -> Result<CreateEmail, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn lists_come_as_a_string_or_an_array_of_strings() {
        let body = decode(r#"{"to": "a@x.example, b@x.example", "cc": ["c@x.example"]}"#).unwrap();
        assert_eq!(
            body.to,
            Some(Addresses::Text("a@x.example, b@x.example".into()))
        );
        assert_eq!(body.cc, Some(Addresses::List(vec!["c@x.example".into()])));
        let err = decode(r#"{"to": 7}"#).unwrap_err();
        assert!(err.contains("an address list"), "{err}");
        let err = decode(r#"{"to": ["a@x.example", 7]}"#).unwrap_err();
        assert!(err.contains("expected a string"), "{err}");
    }

    #[test]
    fn headers_keep_their_order_and_repeats_and_values_must_be_strings() {
        let body = decode(r#"{"headers": {"X-B": "2", "X-A": "1", "X-B": "3"}}"#).unwrap();
        let names: Vec<&str> = body
            .headers
            .as_ref()
            .unwrap()
            .0
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["X-B", "X-A", "X-B"]);
        assert!(decode(r#"{"tags": {"a": 1}}"#).is_err());
    }

    #[test]
    fn unknown_fields_are_refused_in_the_body_and_in_attachments() {
        assert!(decode(r#"{"bogus": 1}"#).unwrap_err().contains("bogus"));
        let err = decode(r#"{"attachments": [{"filename": "a", "data": "x"}]}"#).unwrap_err();
        assert!(err.contains("data"), "{err}");
    }
}
