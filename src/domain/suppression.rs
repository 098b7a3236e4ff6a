//! The suppression list: addresses mailroom no longer sends to, because their mailbox
//! does not exist (a hard bounce), their owner complained, or someone said so. And the
//! rule that tells a refusal meaning "no such mailbox" from the other refusals.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};

use super::{Address, EmailId, Field, Violation, Violations};

/// Why an address is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SuppressionReason {
    /// A server said the mailbox does not exist (at RCPT, or in a later DSN).
    HardBounce,
    /// The recipient reported a message as spam (an ARF report).
    Complaint,
    /// Added through the API.
    Manual,
}

impl SuppressionReason {
    pub const ALL: [SuppressionReason; 3] = [
        SuppressionReason::HardBounce,
        SuppressionReason::Complaint,
        SuppressionReason::Manual,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionReason::HardBounce => "hard_bounce",
            SuppressionReason::Complaint => "complaint",
            SuppressionReason::Manual => "manual",
        }
    }

    /// Reads a reason a caller gave, naming `field` when it is none of them.
    pub fn parse(raw: &str, field: Field) -> Result<Self, Violations> {
        raw.parse().map_err(|_| {
            Violations::one(Violation::new(
                field,
                "reason",
                "must be one of hard_bounce, complaint, manual",
            ))
        })
    }
}

impl fmt::Display for SuppressionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SuppressionReason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SuppressionReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == s)
            .ok_or_else(|| format!("unknown suppression reason {s:?}"))
    }
}

/// An address in the form the list keys it by: lowercase, its domain in ASCII (so
/// `Jo@Bücher.example` and `jo@xn--bcher-kva.example` are one entry). Comparing
/// addresses case-insensitively, local part included, is what every mailbox provider
/// does in practice, and what a suppression list must do to be safe.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SuppressedAddress(String);

impl SuppressedAddress {
    pub fn of(address: &Address) -> Self {
        SuppressedAddress(address.ascii().to_lowercase())
    }

    /// Reads an address a caller gave, naming `field` when it is not one.
    pub fn parse(raw: &str, field: Field) -> Result<Self, Violations> {
        Address::parse(raw.trim())
            .map(|address| Self::of(&address))
            .map_err(|err| {
                Violations::one(Violation::new(
                    field,
                    err.code(),
                    format!("{raw:?} is not an email address"),
                ))
            })
    }

    /// The form the store holds, trusted as canonical.
    pub fn from_stored(address: String) -> Self {
        SuppressedAddress(address)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SuppressedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One entry of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    /// Orders entries for the list's cursor (a UUID v7: by creation).
    pub id: uuid::Uuid,
    pub address: SuppressedAddress,
    pub reason: SuppressionReason,
    /// The email whose refusal or report caused it (automatic entries).
    pub email_id: Option<EmailId>,
    /// What the receiving server said (automatic entries).
    pub smtp_text: Option<String>,
    /// What the person who added it wrote (manual entries).
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// An entry to add. An address already on the list keeps its first entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSuppression {
    pub address: SuppressedAddress,
    pub reason: SuppressionReason,
    pub email_id: Option<EmailId>,
    pub smtp_text: Option<String>,
    pub note: Option<String>,
}

/// The longest note a manual entry takes, in characters.
pub const MAX_NOTE_CHARS: usize = 1000;

/// Whether a permanent refusal of a recipient says its mailbox does not exist, so that
/// mailing it again can never succeed: the enhanced status codes for a bad destination
/// mailbox (5.1.1), a bad destination system (5.1.2) and a bad recipient address syntax
/// (5.1.10, RFC 7505's null MX); or, from a server that sends no enhanced code, a 550,
/// 551 or 553 reply to RCPT. Other 5xx replies (policy, content, a full mailbox) fail the
/// email without suppressing; 4xx replies never suppress.
pub fn is_hard_bounce(code: Option<u16>, text: &str) -> bool {
    match enhanced_code(text) {
        Some((class, subject, detail)) => {
            class == 5 && subject == 1 && matches!(detail, 1 | 2 | 10)
        }
        None => matches!(code, Some(550 | 551 | 553)),
    }
}

/// The first enhanced status code (RFC 3463, `class.subject.detail`) in a reply's text.
/// lettre words a reply as `permanent error (550): 5.1.1 <a@b>: user unknown`; servers
/// put the code first in their text, so the first word that has its shape is it.
pub fn enhanced_code(text: &str) -> Option<(u8, u16, u16)> {
    text.split(|c: char| c.is_whitespace() || matches!(c, ':' | '(' | ')' | ';' | ','))
        .find_map(|word| {
            let mut parts = word.split('.');
            let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() || !matches!(class, "2" | "4" | "5") {
                return None;
            }
            let number = |part: &str| {
                (1..=3).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit())
            };
            if !number(subject) || !number(detail) {
                return None;
            }
            Some((
                class.parse().ok()?,
                subject.parse().ok()?,
                detail.parse().ok()?,
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_unknown_refusals_are_hard_bounces() {
        for (code, text) in [
            (
                Some(550),
                "permanent error (550): 5.1.1 <jo@x.example>: user unknown",
            ),
            (
                Some(550),
                "permanent error (550): 5.1.2 bad destination system",
            ),
            (Some(550), "permanent error (550): 5.1.10 null MX"),
            (Some(554), "permanent error (554): 5.1.1 no such user"),
            // No enhanced code: the reply code decides.
            (Some(550), "permanent error (550): no such user here"),
            (Some(551), "permanent error (551): user not local"),
            (Some(553), "permanent error (553): mailbox name not allowed"),
        ] {
            assert!(is_hard_bounce(code, text), "{code:?} {text}");
        }
    }

    #[test]
    fn other_refusals_are_not() {
        for (code, text) in [
            // Policy, content, a full mailbox: the address itself is fine.
            (Some(550), "permanent error (550): 5.7.1 relaying denied"),
            (Some(552), "permanent error (552): 5.2.2 mailbox full"),
            (Some(554), "permanent error (554): transaction failed"),
            (Some(550), "permanent error (550): 5.1.3 bad address syntax"),
            // Transient: never.
            (Some(450), "transient error (450): 4.1.1 try later"),
            (Some(451), "transient error (451): 4.3.0 busy"),
            (None, "connection refused"),
        ] {
            assert!(!is_hard_bounce(code, text), "{code:?} {text}");
        }
    }

    #[test]
    fn the_enhanced_code_is_the_first_word_of_its_shape() {
        assert_eq!(enhanced_code("550 5.1.1 user unknown"), Some((5, 1, 1)));
        assert_eq!(enhanced_code("(550): 5.1.10 null"), Some((5, 1, 10)));
        assert_eq!(enhanced_code("version 1.2.3 says 4.7.1"), Some((4, 7, 1)));
        assert_eq!(enhanced_code("host 10.0.0.1 down"), None);
        assert_eq!(enhanced_code("5.1 or 5.1.1.1 or 5.1234.1"), None);
        assert_eq!(enhanced_code(""), None);
    }

    #[test]
    fn addresses_are_keyed_case_and_domain_form_aside() {
        let key = |raw: &str| SuppressedAddress::parse(raw, Field::Address).unwrap();
        assert_eq!(key("Jo@Example.COM"), key("jo@example.com"));
        assert_eq!(key(" jo@bücher.example "), key("JO@xn--bcher-kva.example"));
        assert_eq!(
            key("jo@bücher.example").as_str(),
            "jo@xn--bcher-kva.example"
        );
        assert!(SuppressedAddress::parse("not an address", Field::Address).is_err());
    }

    #[test]
    fn reasons_read_back_as_written() {
        for reason in SuppressionReason::ALL {
            assert_eq!(reason.as_str().parse::<SuppressionReason>(), Ok(reason));
        }
        assert!(SuppressionReason::parse("soft", Field::Reason).is_err());
    }
}
