//! The `mail:create` event: what any producer (or the REST API's asynchronous path)
//! publishes to have an email created. The same JSON as a REST create body, plus the id
//! the email must get (`emailID`), its idempotency key (`idempotencyKey`) and, when the
//! parts were rendered already, the template they come from (`renderedFrom`);
//! `createdAt`, which the original service's events carried, is accepted and ignored.

use std::fmt;

use serde::{
    Deserialize, Deserializer, Serialize,
    de::{
        DeserializeSeed, IgnoredAny, IntoDeserializer, MapAccess, Visitor,
        value::MapAccessDeserializer,
    },
};

use super::CreateEmail;
use crate::domain::{EmailDraft, EmailId, Field, NewEmail, TemplateRef, Violation, Violations};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateEvent {
    /// The id the email must get; optional. A string, so that a bad id is reported as a
    /// violation of `emailID` rather than as an undecodable event.
    #[serde(rename = "emailID", skip_serializing_if = "Option::is_none")]
    pub email_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The template the parts were rendered from, when the REST API's asynchronous path
    /// rendered them (recorded with the email; a producer sends `template` instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rendered_from: Option<TemplateRef>,
    #[serde(flatten)]
    pub email: CreateEmail,
}

impl CreateEvent {
    pub fn from_new_email(email: &NewEmail) -> Self {
        CreateEvent {
            email_id: Some(email.id.to_string()),
            idempotency_key: email.idempotency_key.clone(),
            rendered_from: email.template.clone(),
            email: CreateEmail::from_new_email(email),
        }
    }

    /// Turns the event into a draft (the idempotency key is the event's own field).
    pub fn into_draft(self) -> Result<EmailDraft, Violations> {
        let id = self
            .email_id
            .as_deref()
            .map(|raw| EmailId::parse(raw, Field::EmailId))
            .transpose()?;
        if self.rendered_from.is_some() && self.email.template.is_some() {
            return Err(Violations::one(Violation::new(
                Field::Template,
                "template_conflict",
                "an event is rendered from a template already (renderedFrom) or names one \
                 to render (template), not both",
            )));
        }
        Ok(EmailDraft {
            id,
            idempotency_key: self.idempotency_key,
            rendered_from: self.rendered_from,
            ..self.email.into_draft()
        })
    }

    /// Decodes an event, naming what is wrong (and where) when it cannot be decoded.
    pub fn decode(payload: &[u8]) -> Result<Self, Violations> {
        let malformed = |what: String| {
            Violations::one(Violation::new(
                Field::Body,
                "malformed",
                format!("not a valid create event: {what}"),
            ))
        };
        let deserializer = &mut serde_json::Deserializer::from_slice(payload);
        let event = serde_path_to_error::deserialize::<_, CreateEvent>(&mut *deserializer)
            .map_err(|err| {
                let path = err.path().to_string();
                let inner = err.into_inner();
                malformed(if path == "." {
                    inner.to_string()
                } else {
                    format!("{path}: {inner}")
                })
            })?;
        // Nothing may follow the object.
        deserializer
            .end()
            .map_err(|err| malformed(err.to_string()))?;
        Ok(event)
    }
}

/// An event is a create body with four more fields: those are taken out as the map
/// goes by, and the rest is read as a [`CreateEmail`] (which refuses unknown fields),
/// in the order written, so repeated names and error paths stay as they were sent.
impl<'de> Deserialize<'de> for CreateEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EventVisitor;

        impl<'de> Visitor<'de> for EventVisitor {
            type Value = CreateEvent;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a create event: a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<CreateEvent, A::Error> {
                let mut extra = Extra::default();
                let email = CreateEmail::deserialize(MapAccessDeserializer::new(Filtered {
                    inner: map,
                    extra: &mut extra,
                }))?;
                Ok(CreateEvent {
                    email_id: extra.email_id,
                    idempotency_key: extra.idempotency_key,
                    rendered_from: extra.rendered_from,
                    email,
                })
            }
        }

        deserializer.deserialize_map(EventVisitor)
    }
}

/// The fields an event has beyond a create body.
#[derive(Default)]
struct Extra {
    email_id: Option<String>,
    idempotency_key: Option<String>,
    rendered_from: Option<TemplateRef>,
}

/// A map without the event's own fields, which it keeps aside.
struct Filtered<'a, A> {
    inner: A,
    extra: &'a mut Extra,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Filtered<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.inner.next_key::<String>()? else {
                return Ok(None);
            };
            match key.as_str() {
                "emailID" => self.extra.email_id = self.inner.next_value()?,
                "idempotencyKey" => self.extra.idempotency_key = self.inner.next_value()?,
                "renderedFrom" => self.extra.rendered_from = self.inner.next_value()?,
                // The original service's events carried it; it says nothing mailroom needs.
                "createdAt" => {
                    self.inner.next_value::<IgnoredAny>()?;
                }
                _ => return seed.deserialize(key.into_deserializer()).map(Some),
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.inner.next_value_seed(seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AddressList;

    #[test]
    fn a_create_event_from_the_original_service_decodes() {
        let event = CreateEvent::decode(
            br#"{"from":"a@example.com","to":"b@example.com","subject":"s","message":"m","createdAt":"2021-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let draft = event.into_draft().unwrap();
        assert_eq!(draft.to, Some(AddressList::Text("b@example.com".into())));
        assert_eq!(draft.id, None);
    }

    #[test]
    fn unknown_fields_in_a_create_event_are_refused_by_name() {
        let err =
            CreateEvent::decode(br#"{"to":"b@example.com","bcc2":"x@example.com"}"#).unwrap_err();
        assert!(err.to_string().contains("bcc2"), "{err}");
        let err = CreateEvent::decode(br#"{"attachments":[{"filename":7}]}"#).unwrap_err();
        assert!(err.to_string().contains("attachments[0].filename"), "{err}");
        assert!(CreateEvent::decode(b"[1]").is_err());
        assert!(CreateEvent::decode(br#"{"emailID": 7}"#).is_err());
    }

    #[test]
    fn a_bad_email_id_in_a_create_event_is_named() {
        let event = CreateEvent {
            email_id: Some("nope".into()),
            ..Default::default()
        };
        let err = event.into_draft().unwrap_err();
        assert_eq!(err.fields().collect::<Vec<_>>(), vec![Field::EmailId]);
    }
}
