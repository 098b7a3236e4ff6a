//! Property tests of the `mail:create` event: any bytes are decoded or refused without
//! panicking, and an event becomes an email exactly when it follows the domain's rules
//! (restated in `domain::properties`, whose strategies these reuse).

use std::collections::HashSet;

use proptest::{collection::vec, option, prelude::*};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::CreateEvent;
use crate::domain::{
    Rejected,
    properties::{
        assert_follows_the_rules, bare_mailbox, body, broken_fields, draft, idempotency_key, rules,
        subject, text,
    },
};

// --- strategies ------------------------------------------------------------------------

/// Any JSON value, to put where a string is expected.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text(10).prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((text(6), inner), 0..4)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// A field of a create event: absent, null, a string, or a value of the wrong type.
fn event_field(string: impl Strategy<Value = String>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        8 => string.prop_map(|s| Some(Value::String(s))),
        1 => any_json().prop_map(Some),
    ]
}

fn email_id_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<u128>().prop_map(|n| Uuid::from_u128(n).to_string()),
        1 => any::<u128>().prop_map(|n| format!(" {} ", Uuid::from_u128(n).simple())),
        2 => text(40),
    ]
}

/// A create event as JSON: each known field in any shape, sometimes an unknown field.
fn event_json() -> impl Strategy<Value = Value> {
    (
        (
            event_field(email_id_text()),
            event_field(bare_mailbox()),
            event_field(bare_mailbox()),
            event_field(subject()),
        ),
        (
            event_field(body()),
            event_field(body()),
            event_field(idempotency_key()),
            option::of(any_json()),
            option::weighted(0.1, (text(8), any_json())),
        ),
    )
        .prop_map(
            |(
                (email_id, from, to, subject),
                (message, html, idempotency_key, created_at, unknown),
            )| {
                let mut object = Map::new();
                let known = [
                    ("emailID", email_id),
                    ("from", from),
                    ("to", to),
                    ("subject", subject),
                    ("message", message),
                    ("html", html),
                    ("idempotencyKey", idempotency_key),
                    ("createdAt", created_at),
                ];
                for (name, value) in known {
                    if let Some(value) = value {
                        object.insert(name.to_owned(), value);
                    }
                }
                if let Some((name, value)) = unknown {
                    object.insert(name, value);
                }
                Value::Object(object)
            },
        )
}

/// Whether `decode` must take the event: an object whose known fields are strings or
/// null (`createdAt` may be anything), and no other field.
fn decodable(event: &Value) -> bool {
    let Value::Object(object) = event else {
        return false;
    };
    object.iter().all(|(name, value)| match name.as_str() {
        "createdAt" => true,
        "emailID" | "from" | "subject" | "message" | "html" | "idempotencyKey" => {
            value.is_string() || value.is_null()
        }
        // A list: one string, or an array of strings.
        "to" => match value {
            Value::Array(items) => items.iter().all(Value::is_string),
            other => other.is_string() || other.is_null(),
        },
        _ => false,
    })
}

fn string_at(event: &Value, name: &str) -> Option<String> {
    event.get(name).and_then(Value::as_str).map(str::to_owned)
}

// --- properties ------------------------------------------------------------------------

proptest! {

    /// Any bytes on `mail:create`: decoding and validating never panic, and whatever
    /// gets through follows the rules.
    #[test]
    fn any_bytes_on_mail_create_are_decoded_or_refused_without_panicking(
        payload in prop_oneof![
            vec(any::<u8>(), 0..256),
            // Valid events with bytes changed, cut or doubled.
            (event_json(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(event, at, byte)| {
                let mut bytes = serde_json::to_vec(&event).unwrap();
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                bytes
            }),
            (event_json(), any::<prop::sample::Index>()).prop_map(|(event, at)| {
                let bytes = serde_json::to_vec(&event).unwrap();
                bytes[..at.index(bytes.len() + 1)].to_vec()
            }),
        ],
    ) {
        if let Ok(event) = CreateEvent::decode(&payload)
            && let Ok(draft) = event.into_draft()
            && let Ok(email) = rules().new_email(draft)
        {
            assert_follows_the_rules(&email);
        }
    }

    /// Well-formed JSON of any shape: an event is decoded exactly when its fields have
    /// the right types, and becomes an email exactly when every rule holds.
    #[test]
    fn a_create_event_becomes_an_email_exactly_when_it_follows_the_rules(
        event in event_json(),
    ) {
        let decoded = CreateEvent::decode(&serde_json::to_vec(&event).unwrap());
        prop_assert_eq!(decoded.is_ok(), decodable(&event), "{}", event);
        let Ok(decoded) = decoded else { return Ok(()) };

        let email_id = string_at(&event, "emailID");
        let draft = decoded.into_draft();
        let id_ok = email_id.as_deref().is_none_or(|id| Uuid::try_parse(id.trim()).is_ok());
        prop_assert_eq!(draft.is_ok(), id_ok);
        let Ok(draft) = draft else { return Ok(()) };

        prop_assert_eq!(&draft.idempotency_key, &string_at(&event, "idempotencyKey"));

        // The restated rules know single mailboxes; a list of arbitrary items is only
        // held to what every accepted email satisfies.
        let exact = !event.get("to").is_some_and(Value::is_array);
        let broken = broken_fields(&draft);
        match rules().new_email(draft) {
            Ok(email) => {
                prop_assert!(!exact || broken.is_empty(), "accepted despite {:?}", broken);
                assert_follows_the_rules(&email);
                if let Some(id) = email_id {
                    prop_assert_eq!(email.id.as_uuid(), Uuid::try_parse(id.trim()).unwrap());
                }
            }
            Err(Rejected::Invalid(violations)) if exact => {
                prop_assert_eq!(violations.fields().collect::<HashSet<_>>(), broken);
            }
            Err(Rejected::Invalid(_)) => {}
            Err(Rejected::TooLarge(too_large)) => {
                prop_assert!(false, "no event of the strategy is that large: {:?}", too_large);
            }
        }
    }

    /// What the REST API publishes for the create workers decodes into the same email.
    #[test]
    fn an_accepted_email_survives_the_trip_through_a_create_event(draft in draft()) {
        let Ok(email) = rules().new_email(draft) else { return Ok(()) };
        let payload = serde_json::to_vec(&CreateEvent::from_new_email(&email)).unwrap();
        let again = CreateEvent::decode(&payload)
            .map_err(Rejected::Invalid)
            .and_then(|event| event.into_draft().map_err(Rejected::Invalid))
            .and_then(|draft| rules().new_email(draft));
        prop_assert_eq!(again, Ok(email));
    }
}
