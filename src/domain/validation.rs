//! The one place where caller input becomes domain values. REST bodies, gRPC requests
//! and NATS events are all turned into an [`EmailDraft`] and checked here, so the three
//! paths accept and refuse exactly the same things.

use std::borrow::Cow;

use validator::{Validate, ValidationError};

use super::{Address, AddressError, EmailId, Field, Violation, Violations};

/// Most bytes in a message (text or HTML body).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Most characters in a subject.
pub const MAX_SUBJECT_CHARS: u64 = 255;
/// Most characters in an idempotency key.
pub const MAX_IDEMPOTENCY_KEY_CHARS: u64 = 255;
/// Most characters in a search query.
pub const MAX_SEARCH_CHARS: usize = 256;
/// Largest page size.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Page size when none is given.
pub const DEFAULT_PAGE_SIZE: u32 = 10;
/// Highest page number; keeps the offset arithmetic far from overflow.
pub const MAX_PAGE: u32 = 1_000_000;

/// An email as a caller asked for it, before any check. Missing fields are `None` so
/// every missing field is reported at once.
#[derive(Debug, Clone, Default, Validate)]
pub struct EmailDraft {
    #[validate(required(message = "is required"), custom(function = "email_address"))]
    pub from: Option<String>,
    #[validate(required(message = "is required"), custom(function = "email_address"))]
    pub to: Option<String>,
    #[validate(
        required(message = "is required"),
        length(
            min = 1,
            max = "MAX_SUBJECT_CHARS",
            message = "must be 1 to 255 characters"
        ),
        custom(function = "header_safe")
    )]
    pub subject: Option<String>,
    #[validate(required(message = "is required"), custom(function = "body_text"))]
    pub message: Option<String>,
    #[validate(custom(function = "body_text"))]
    pub html: Option<String>,
    #[validate(
        length(
            min = 1,
            max = "MAX_IDEMPOTENCY_KEY_CHARS",
            message = "must be 1 to 255 characters"
        ),
        custom(function = "header_safe")
    )]
    pub idempotency_key: Option<String>,
    /// The id the email must get (set by the asynchronous REST path, or by a producer of
    /// create events); a new one is generated when `None`.
    pub id: Option<EmailId>,
}

/// A validated email, ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEmail {
    pub id: EmailId,
    pub from: Address,
    pub to: Address,
    pub subject: String,
    pub message: String,
    pub html: Option<String>,
    pub idempotency_key: Option<String>,
}

impl TryFrom<EmailDraft> for NewEmail {
    type Error = Violations;

    fn try_from(draft: EmailDraft) -> Result<Self, Violations> {
        if let Err(errors) = draft.validate() {
            let mut list = Vec::new();
            for (name, errors) in errors.field_errors() {
                let field = field_of(&name);
                list.extend(errors.iter().map(|e| {
                    Violation::new(
                        field,
                        e.code.clone(),
                        e.message.clone().unwrap_or_else(|| e.code.clone()),
                    )
                }));
            }
            return Err(Violations::check(list).unwrap_err());
        }
        // `validate` has checked that these are present and well formed.
        let address = |raw: Option<String>, field| {
            Address::parse(&raw.unwrap_or_default())
                .map_err(|err| Violations::one(Violation::new(field, err.code(), err.to_string())))
        };
        Ok(NewEmail {
            id: draft.id.unwrap_or_else(EmailId::generate),
            from: address(draft.from, Field::From)?,
            to: address(draft.to, Field::To)?,
            subject: draft.subject.unwrap_or_default(),
            message: draft.message.unwrap_or_default(),
            html: draft.html,
            idempotency_key: draft.idempotency_key,
        })
    }
}

fn field_of(rust_name: &str) -> Field {
    match rust_name {
        "from" => Field::From,
        "to" => Field::To,
        "subject" => Field::Subject,
        "message" => Field::Message,
        "html" => Field::Html,
        "idempotency_key" => Field::IdempotencyKey,
        _ => Field::Body,
    }
}

fn error(code: &'static str, message: &'static str) -> ValidationError {
    ValidationError::new(code).with_message(Cow::Borrowed(message))
}

/// An RFC 5322 addr-spec ([`Address`]), which also rules out CR/LF.
fn email_address(value: &str) -> Result<(), ValidationError> {
    Address::parse(value)
        .map(|_| ())
        .map_err(|err: AddressError| {
            ValidationError::new(err.code()).with_message(Cow::Owned(err.to_string()))
        })
}

/// Text that ends up in a mail header: no CR/LF (header injection) and no other control
/// characters.
fn header_safe(value: &str) -> Result<(), ValidationError> {
    if value.contains(['\r', '\n']) {
        return Err(error(
            "line_break",
            "must not contain line breaks (CR or LF)",
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(error(
            "control_characters",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A message body: at least one character, at most 1 MiB, and no NUL (PostgreSQL text
/// cannot hold it and no mail should carry it).
fn body_text(value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(error("length", "must not be empty"));
    }
    if value.len() > MAX_MESSAGE_BYTES {
        return Err(error("too_large", "must be at most 1 MiB (1048576 bytes)"));
    }
    if value.contains('\0') {
        return Err(error("nul_character", "must not contain NUL characters"));
    }
    Ok(())
}

/// A validated search request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// Words to look for; `None` lists every email.
    pub text: Option<String>,
    /// Page number, from 1.
    pub page: u32,
    pub size: u32,
}

impl SearchQuery {
    /// Checks a search request. Missing or zero `page`/`size` take their defaults, as the
    /// original service (and proto3, where 0 means unset) did.
    pub fn parse(
        text: Option<&str>,
        page: Option<i64>,
        size: Option<i64>,
    ) -> Result<Self, Violations> {
        let mut list = Vec::new();
        let text = text.map(str::trim).filter(|t| !t.is_empty());
        if let Some(text) = text {
            if text.chars().count() > MAX_SEARCH_CHARS {
                list.push(Violation::new(
                    Field::Search,
                    "length",
                    "must be at most 256 characters",
                ));
            } else if text.contains('\0') {
                list.push(Violation::new(
                    Field::Search,
                    "nul_character",
                    "must not contain NUL characters",
                ));
            }
        }
        let page = match page.unwrap_or(0) {
            0 => 1,
            p if (1..=i64::from(MAX_PAGE)).contains(&p) => p as u32,
            _ => {
                list.push(Violation::new(
                    Field::Page,
                    "range",
                    "must be between 1 and 1000000",
                ));
                1
            }
        };
        let size = match size.unwrap_or(0) {
            0 => DEFAULT_PAGE_SIZE,
            s if (1..=i64::from(MAX_PAGE_SIZE)).contains(&s) => s as u32,
            _ => {
                list.push(Violation::new(
                    Field::Size,
                    "range",
                    "must be between 1 and 100",
                ));
                DEFAULT_PAGE_SIZE
            }
        };
        Violations::check(list)?;
        Ok(SearchQuery {
            text: text.map(str::to_owned),
            page,
            size,
        })
    }

    pub fn offset(&self) -> i64 {
        i64::from(self.page - 1) * i64::from(self.size)
    }
}

/// One page of search results.
#[derive(Debug, Clone)]
pub struct SearchPage<T> {
    /// Every match when `total_exact`; otherwise a lower bound, because counting stopped
    /// at the count limit (an exact count of a common word reads the whole table).
    pub total_count: i64,
    pub total_exact: bool,
    pub page: u32,
    pub size: u32,
    pub items: Vec<T>,
    /// Whether at least one match follows this page.
    pub has_more: bool,
}

impl<T> SearchPage<T> {
    /// Assembles a page from a count that stopped after `limit + 1` matches (`counted`
    /// above `limit` means "more than `limit`") and the page's rows, fetched with one row
    /// more than `size` so that row tells whether more follow, whatever the count knows.
    pub fn assemble(query: &SearchQuery, counted: i64, limit: u32, mut rows: Vec<T>) -> Self {
        let size = query.size as usize;
        let has_more = rows.len() > size;
        rows.truncate(size);
        let total_exact = counted <= i64::from(limit);
        let total_count = if total_exact {
            counted
        } else {
            // Past the limit, a deep page itself proves more matches than the limit.
            let seen = match rows.len() {
                0 => 0,
                shown => query.offset() + shown as i64 + i64::from(has_more),
            };
            seen.max(i64::from(limit))
        };
        SearchPage {
            total_count,
            total_exact,
            page: query.page,
            size: query.size,
            items: rows,
            has_more,
        }
    }

    /// Pages holding `total_count` matches: a lower bound too when the count is not exact.
    pub fn total_pages(&self) -> i64 {
        (self.total_count + i64::from(self.size) - 1) / i64::from(self.size)
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> SearchPage<U> {
        SearchPage {
            total_count: self.total_count,
            total_exact: self.total_exact,
            page: self.page,
            size: self.size,
            items: self.items.into_iter().map(f).collect(),
            has_more: self.has_more,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft() -> EmailDraft {
        EmailDraft {
            from: Some("sender@example.com".into()),
            to: Some("alice@example.com".into()),
            subject: Some("Hello".into()),
            message: Some("Hi Alice".into()),
            ..Default::default()
        }
    }

    fn fields(result: Result<NewEmail, Violations>) -> Vec<(Field, String)> {
        result
            .unwrap_err()
            .iter()
            .map(|v| (v.field(), v.code.to_string()))
            .collect()
    }

    #[test]
    fn a_complete_draft_becomes_a_new_email() {
        let email = NewEmail::try_from(draft()).unwrap();
        assert_eq!(email.to.to_string(), "alice@example.com");
        assert_eq!(email.subject, "Hello");
    }

    #[test]
    fn every_missing_field_is_reported_at_once() {
        let got = fields(NewEmail::try_from(EmailDraft::default()));
        assert_eq!(
            got,
            vec![
                (Field::From, "required".into()),
                (Field::To, "required".into()),
                (Field::Subject, "required".into()),
                (Field::Message, "required".into()),
            ]
        );
    }

    #[test]
    fn invalid_addresses_are_refused() {
        for bad in [
            "not-an-address",
            "a@",
            "@b.c",
            "a b@c.d",
            "Alice <a@b.c>",
            "a@b.c\r\nBcc: x@y.z",
        ] {
            let got = fields(NewEmail::try_from(EmailDraft {
                to: Some(bad.into()),
                ..draft()
            }));
            assert_eq!(got.len(), 1, "{bad:?}: {got:?}");
            assert_eq!(got[0].0, Field::To, "{bad:?}");
        }
    }

    #[test]
    fn an_address_longer_than_254_characters_is_refused() {
        let long = format!("{}@example.com", "a".repeat(250));
        let got = fields(NewEmail::try_from(EmailDraft {
            from: Some(long),
            ..draft()
        }));
        assert_eq!(got, vec![(Field::From, "length".into())]);
    }

    #[test]
    fn line_breaks_in_the_subject_are_refused() {
        for bad in ["Hi\r\nBcc: victim@example.com", "Hi\nthere", "Hi\rthere"] {
            let got = fields(NewEmail::try_from(EmailDraft {
                subject: Some(bad.into()),
                ..draft()
            }));
            assert_eq!(got, vec![(Field::Subject, "line_break".into())], "{bad:?}");
        }
    }

    #[test]
    fn other_control_characters_in_the_subject_are_refused() {
        let got = fields(NewEmail::try_from(EmailDraft {
            subject: Some("a\u{7}b".into()),
            ..draft()
        }));
        assert_eq!(got, vec![(Field::Subject, "control_characters".into())]);
    }

    #[test]
    fn subject_length_is_bounded_in_characters() {
        let ok = "é".repeat(255);
        assert!(
            NewEmail::try_from(EmailDraft {
                subject: Some(ok),
                ..draft()
            })
            .is_ok()
        );
        let got = fields(NewEmail::try_from(EmailDraft {
            subject: Some("é".repeat(256)),
            ..draft()
        }));
        assert_eq!(got, vec![(Field::Subject, "length".into())]);
        let got = fields(NewEmail::try_from(EmailDraft {
            subject: Some(String::new()),
            ..draft()
        }));
        assert_eq!(got, vec![(Field::Subject, "length".into())]);
    }

    #[test]
    fn message_size_is_bounded_to_one_mebibyte() {
        let ok = "a".repeat(MAX_MESSAGE_BYTES);
        assert!(
            NewEmail::try_from(EmailDraft {
                message: Some(ok),
                ..draft()
            })
            .is_ok()
        );
        let got = fields(NewEmail::try_from(EmailDraft {
            message: Some("a".repeat(MAX_MESSAGE_BYTES + 1)),
            ..draft()
        }));
        assert_eq!(got, vec![(Field::Message, "too_large".into())]);
        let got = fields(NewEmail::try_from(EmailDraft {
            message: Some(String::new()),
            ..draft()
        }));
        assert_eq!(got, vec![(Field::Message, "length".into())]);
    }

    #[test]
    fn multi_line_messages_are_fine_but_nul_is_not() {
        assert!(
            NewEmail::try_from(EmailDraft {
                message: Some("a\r\nb\tc".into()),
                ..draft()
            })
            .is_ok()
        );
        let got = fields(NewEmail::try_from(EmailDraft {
            message: Some("a\0b".into()),
            ..draft()
        }));
        assert_eq!(got, vec![(Field::Message, "nul_character".into())]);
    }

    #[test]
    fn idempotency_keys_are_bounded_and_header_safe() {
        let got = fields(NewEmail::try_from(EmailDraft {
            idempotency_key: Some("k".repeat(256)),
            ..draft()
        }));
        assert_eq!(got, vec![(Field::IdempotencyKey, "length".into())]);
        let got = fields(NewEmail::try_from(EmailDraft {
            idempotency_key: Some("a\nb".into()),
            ..draft()
        }));
        assert_eq!(got, vec![(Field::IdempotencyKey, "line_break".into())]);
    }

    #[test]
    fn search_defaults_and_bounds() {
        let q = SearchQuery::parse(None, None, None).unwrap();
        assert_eq!((q.text, q.page, q.size), (None, 1, DEFAULT_PAGE_SIZE));
        let q = SearchQuery::parse(Some("  "), Some(3), Some(100)).unwrap();
        assert_eq!(
            (q.text.clone(), q.page, q.size, q.offset()),
            (None, 3, 100, 200)
        );
        let err = SearchQuery::parse(Some("x"), Some(-1), Some(101)).unwrap_err();
        assert_eq!(
            err.fields().collect::<Vec<_>>(),
            vec![Field::Page, Field::Size]
        );
        let err = SearchQuery::parse(Some(&"x".repeat(257)), None, None).unwrap_err();
        assert_eq!(err.fields().collect::<Vec<_>>(), vec![Field::Search]);
    }

    fn query(page: i64, size: i64) -> SearchQuery {
        SearchQuery::parse(Some("x"), Some(page), Some(size)).unwrap()
    }

    #[test]
    fn pages_are_counted_up() {
        // 21 matches, page 2 of size 10: eleven rows fetched, so more follow.
        let page = SearchPage::assemble(&query(2, 10), 21, 1000, vec![(); 11]);
        assert_eq!((page.total_count, page.total_exact), (21, true));
        assert_eq!(page.items.len(), 10, "the extra row is not shown");
        assert_eq!(page.total_pages(), 3);
        assert!(page.has_more);
        let page = SearchPage::assemble(&query(2, 10), 20, 1000, vec![(); 10]);
        assert_eq!(page.total_pages(), 2);
        assert!(!page.has_more);
        let page = SearchPage::assemble(&query(1, 10), 0, 1000, Vec::<()>::new());
        assert_eq!(page.total_pages(), 0);
        assert!(!page.has_more);
    }

    #[test]
    fn a_count_at_the_limit_is_exact_and_one_past_it_is_a_lower_bound() {
        let page = SearchPage::assemble(&query(1, 10), 5, 5, vec![(); 5]);
        assert_eq!((page.total_count, page.total_exact), (5, true));
        assert_eq!(page.total_pages(), 1);
        assert!(!page.has_more);

        let page = SearchPage::assemble(&query(1, 2), 6, 5, vec![(); 3]);
        assert_eq!((page.total_count, page.total_exact), (5, false));
        assert_eq!(page.total_pages(), 3);
        assert!(page.has_more);
    }

    #[test]
    fn a_capped_count_grows_with_what_a_deep_page_proves() {
        // Limit 5, page 4 of size 2: rows 7 and 8 exist, and a ninth follows.
        let page = SearchPage::assemble(&query(4, 2), 6, 5, vec![(); 3]);
        assert_eq!((page.total_count, page.total_exact), (9, false));
        assert_eq!(page.total_pages(), 5);
        assert!(page.has_more);
        // The last page past the limit: nothing follows it.
        let page = SearchPage::assemble(&query(4, 2), 6, 5, vec![(); 1]);
        assert_eq!(page.total_count, 7);
        assert_eq!(page.total_pages(), 4);
        assert!(!page.has_more);
        // A page past every match is empty and says nothing follows.
        let page = SearchPage::assemble(&query(50, 2), 6, 5, Vec::<()>::new());
        assert_eq!(page.total_count, 5);
        assert!(!page.has_more);
    }
}
