//! Listing emails: filters that combine, newest first, paged by an opaque cursor (keyset
//! pagination: a page starts after the last email of the one before, however deep).

use base64::Engine;
use chrono::{DateTime, Utc};

use super::{Email, EmailId, EmailStatus, Field, Violation, Violations};

/// Page size when none is given.
pub const DEFAULT_LIST_LIMIT: u32 = 20;
/// Largest page size.
pub const MAX_LIST_LIMIT: u32 = 100;

/// Where a page of a listing starts: after this email, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: EmailId,
}

const CURSOR_VERSION: &str = "v1";

impl Cursor {
    /// Cuts a page read with one row more than `limit` (newest first) down to `limit`,
    /// answering where the next page starts when there is one: after the last item kept,
    /// whose creation time and id `key` gives.
    pub fn page<T>(
        items: &mut Vec<T>,
        limit: u32,
        key: impl Fn(&T) -> (DateTime<Utc>, uuid::Uuid),
    ) -> Option<Cursor> {
        if items.len() <= limit as usize {
            return None;
        }
        items.truncate(limit as usize);
        let (created_at, id) = key(items.last()?);
        Some(Cursor {
            created_at,
            id: EmailId::from(id),
        })
    }

    /// The opaque text form: base64url of `v1.<microseconds>.<uuid>`.
    pub fn encode(&self) -> String {
        let raw = format!(
            "{CURSOR_VERSION}.{}.{}",
            self.created_at.timestamp_micros(),
            self.id.as_uuid().simple()
        );
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Reads a cursor this service made; anything else (changed, cut, made up) is a
    /// violation of `cursor`.
    pub fn decode(text: &str) -> Result<Self, Violation> {
        let bad = || {
            Violation::new(
                Field::Cursor,
                "cursor",
                "is not a cursor this service gave out",
            )
        };
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let mut parts = raw.split('.');
        let (Some(CURSOR_VERSION), Some(micros), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        let created_at = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
        let id = uuid::Uuid::try_parse(id).map_err(|_| bad())?;
        Ok(Cursor {
            created_at,
            id: EmailId::from(id),
        })
    }
}

/// A validated listing request; every filter is optional and they all combine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub status: Option<EmailStatus>,
    /// A tag's name and value.
    pub tag: Option<(String, String)>,
    /// An address among the email's To recipients (case aside).
    pub to: Option<String>,
    /// The sender's address (case aside).
    pub from: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Words, as the search takes them.
    pub search: Option<String>,
    pub limit: u32,
    pub cursor: Option<Cursor>,
}

/// The listing parameters as a caller wrote them.
#[derive(Debug, Clone, Default)]
pub struct ListParams<'a> {
    pub status: Option<&'a str>,
    pub tag: Option<&'a str>,
    pub to: Option<&'a str>,
    pub from: Option<&'a str>,
    pub created_after: Option<&'a str>,
    pub created_before: Option<&'a str>,
    pub search: Option<&'a str>,
    pub limit: Option<&'a str>,
    pub cursor: Option<&'a str>,
}

fn given(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

impl ListQuery {
    /// Whether `email` passes the filters that need no full-text search: status, tag, To
    /// recipient, sender and time bounds (`search` and the cursor aside).
    pub fn admits(&self, email: &Email) -> bool {
        let address_is =
            |address: &super::Address, wanted: &String| address.as_str().to_lowercase() == *wanted;
        self.status.is_none_or(|status| email.status == status)
            && self
                .tag
                .as_ref()
                .is_none_or(|(name, value)| email.tags.get(name) == Some(value))
            && self
                .to
                .as_ref()
                .is_none_or(|to| email.to.iter().any(|m| address_is(&m.address, to)))
            && self
                .from
                .as_ref()
                .is_none_or(|from| address_is(&email.from.address, from))
            && self.created_after.is_none_or(|t| email.created_at >= t)
            && self.created_before.is_none_or(|t| email.created_at < t)
    }

    /// Checks listing parameters, naming every bad one at once.
    pub fn parse(params: ListParams<'_>) -> Result<Self, Violations> {
        let mut violations = Vec::new();
        let mut query = ListQuery {
            limit: DEFAULT_LIST_LIMIT,
            ..Default::default()
        };
        if let Some(status) = given(params.status) {
            match status.parse::<EmailStatus>() {
                Ok(status) => query.status = Some(status),
                Err(_) => violations.push(Violation::new(
                    Field::Status,
                    "status",
                    format!(
                        "must be one of {}",
                        EmailStatus::ALL.map(EmailStatus::as_str).join(", ")
                    ),
                )),
            }
        }
        if let Some(tag) = given(params.tag) {
            match tag.split_once(':') {
                Some((name, value)) if !name.is_empty() => {
                    query.tag = Some((name.to_owned(), value.to_owned()))
                }
                _ => violations.push(Violation::new(
                    Field::Tag,
                    "tag",
                    "must be name:value, like category:invoice",
                )),
            }
        }
        for (field, raw, slot) in [
            (Field::To, params.to, &mut query.to),
            (Field::From, params.from, &mut query.from),
        ] {
            if let Some(address) = given(raw) {
                if address.chars().count() > super::MAX_ADDRESS_CHARS
                    || address.chars().any(char::is_control)
                {
                    violations.push(Violation::new(
                        field,
                        "address",
                        "must be an address of at most 254 characters",
                    ));
                } else {
                    *slot = Some(address.to_lowercase());
                }
            }
        }
        for (field, raw, slot) in [
            (
                Field::CreatedAfter,
                params.created_after,
                &mut query.created_after,
            ),
            (
                Field::CreatedBefore,
                params.created_before,
                &mut query.created_before,
            ),
        ] {
            if let Some(text) = given(raw) {
                match DateTime::parse_from_rfc3339(text) {
                    Ok(at) => *slot = Some(at.with_timezone(&Utc)),
                    Err(_) => violations.push(Violation::new(
                        field,
                        "datetime",
                        "must be an RFC 3339 date and time with an offset",
                    )),
                }
            }
        }
        if let Some(search) = given(params.search) {
            if search.chars().count() > super::MAX_SEARCH_CHARS || search.contains('\0') {
                violations.push(Violation::new(
                    Field::Search,
                    "length",
                    "must be at most 256 characters, without NUL",
                ));
            } else {
                query.search = Some(search.to_owned());
            }
        }
        if let Some(limit) = given(params.limit) {
            match limit.parse::<u32>() {
                Ok(limit) if (1..=MAX_LIST_LIMIT).contains(&limit) => query.limit = limit,
                _ => violations.push(Violation::new(
                    Field::Limit,
                    "range",
                    "must be between 1 and 100",
                )),
            }
        }
        if let Some(cursor) = given(params.cursor) {
            match Cursor::decode(cursor) {
                Ok(cursor) => query.cursor = Some(cursor),
                Err(violation) => violations.push(violation),
            }
        }
        Violations::check(violations)?;
        Ok(query)
    }
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct ListPage<T> {
    pub items: Vec<T>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_and_anything_else_is_refused() {
        let cursor = Cursor {
            created_at: DateTime::from_timestamp_micros(1_796_150_000_123_456).unwrap(),
            id: EmailId::generate(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Ok(cursor));
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("v2.1.x");
        for bad in ["", "nope", "djEu", forged.as_str(), &cursor.encode()[1..]] {
            assert!(Cursor::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn list_parameters_default_combine_and_are_each_checked() {
        let query = ListQuery::parse(ListParams::default()).unwrap();
        assert_eq!((query.limit, query.status, query.cursor), (20, None, None));
        let query = ListQuery::parse(ListParams {
            status: Some("sent"),
            tag: Some("category:invoice"),
            to: Some("Alice@Example.com"),
            created_after: Some("2026-12-01T00:00:00Z"),
            limit: Some("100"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(query.status, Some(EmailStatus::Sent));
        assert_eq!(query.tag, Some(("category".into(), "invoice".into())));
        assert_eq!(query.to.as_deref(), Some("alice@example.com"));
        let err = ListQuery::parse(ListParams {
            status: Some("lost"),
            tag: Some("nocolon"),
            created_before: Some("yesterday"),
            limit: Some("101"),
            cursor: Some("forged"),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            err.fields().collect::<Vec<_>>(),
            [
                Field::Status,
                Field::Tag,
                Field::CreatedBefore,
                Field::Limit,
                Field::Cursor
            ]
        );
    }
}
