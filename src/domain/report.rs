//! What a report coming back about a sent email says: a delivery status notification
//! (RFC 3464) that a recipient's mail failed or is delayed, or a complaint (an RFC 5965
//! feedback report). The parser lives with the adapters (`adapters::reports`); the use
//! case acts on this.

use super::{Address, EmailId};

/// A report, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub kind: ReportKind,
    /// The Message-ID of the email it is about, from its returned headers (`<…>` off).
    pub message_id: Option<String>,
    /// Addresses the report was sent to or names as the original envelope sender (the
    /// outer `To`, `Delivered-To`, `X-Original-To`, the returned `Return-Path`, an ARF
    /// `Original-Mail-From`): where a VERP return path is found.
    pub return_paths: Vec<String>,
    /// The recipients it reports on, each once.
    pub recipients: Vec<ReportedRecipient>,
    /// SHA-256 of the raw report, hex: the same report posted twice is one.
    pub digest: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// A delivery status notification (`report-type=delivery-status`).
    DeliveryStatus,
    /// A feedback report (`report-type=feedback-report`).
    Complaint,
}

/// What a report says of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedRecipient {
    pub address: Address,
    pub verdict: Verdict,
    /// The DSN's `Status` (`5.1.1`), or the ARF `Feedback-Type` (`abuse`).
    pub status: Option<String>,
    /// The DSN's `Diagnostic-Code` (what the remote server said).
    pub diagnostic: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The mail failed for good: a DSN with `Action: failed` (a 5.x.x status).
    Failed,
    /// Not delivered yet, still being tried: `Action: delayed` (a 4.x.x status).
    Delayed,
    /// The recipient complained.
    Complaint,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Failed => "failed",
            Verdict::Delayed => "delayed",
            Verdict::Complaint => "complaint",
        }
    }
}

/// `smtp.return_path`: the envelope sender with the email's id in it
/// (`bounces+{emailID}@bounce.acme.example`), so a bounce sent back to it names its email
/// even when it returns no headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnPath {
    prefix: String,
    suffix: String,
}

/// The placeholder a return path holds the email id in.
pub const EMAIL_ID_PLACEHOLDER: &str = "{emailID}";

impl ReturnPath {
    /// Reads the setting; it must hold the placeholder once and make an address.
    pub fn parse(template: &str) -> Result<ReturnPath, String> {
        let Some((prefix, suffix)) = template.split_once(EMAIL_ID_PLACEHOLDER) else {
            return Err(format!("must hold {EMAIL_ID_PLACEHOLDER}"));
        };
        if suffix.contains(EMAIL_ID_PLACEHOLDER) {
            return Err(format!("must hold {EMAIL_ID_PLACEHOLDER} only once"));
        }
        let path = ReturnPath {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        };
        let example = path.for_email(EmailId::generate());
        Address::parse(&example)
            .map_err(|_| format!("{example:?} (with an email id in it) is not an address"))?;
        if !path.suffix.contains('@') {
            return Err(format!("{EMAIL_ID_PLACEHOLDER} must be in the local part"));
        }
        Ok(path)
    }

    /// The envelope sender of one email.
    pub fn for_email(&self, id: EmailId) -> String {
        format!("{}{id}{}", self.prefix, self.suffix)
    }

    /// The email a return-path address names, if it is one of ours.
    pub fn email_of(&self, address: &str) -> Option<EmailId> {
        let address = address.trim().trim_start_matches('<').trim_end_matches('>');
        let lower = address.to_ascii_lowercase();
        let id = lower
            .strip_prefix(&self.prefix.to_ascii_lowercase())?
            .strip_suffix(&self.suffix.to_ascii_lowercase())?;
        uuid::Uuid::try_parse(id).ok().map(EmailId::from)
    }
}

/// The id in a Message-ID mailroom made (`<emailID@domain>`), if it holds one.
pub fn email_of_message_id(message_id: &str) -> Option<EmailId> {
    let inner = message_id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    let (local, _) = inner.rsplit_once('@')?;
    uuid::Uuid::try_parse(local).ok().map(EmailId::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_return_path_names_its_email_and_only_ours() {
        let path = ReturnPath::parse("bounces+{emailID}@bounce.acme.example").unwrap();
        let id = EmailId::generate();
        let address = path.for_email(id);
        assert_eq!(address, format!("bounces+{id}@bounce.acme.example"));
        assert_eq!(path.email_of(&address), Some(id));
        assert_eq!(
            path.email_of(&format!("<{}>", address.to_uppercase())),
            Some(id)
        );
        assert_eq!(path.email_of("bounces+nope@bounce.acme.example"), None);
        assert_eq!(path.email_of(&format!("bounces+{id}@other.example")), None);
    }

    #[test]
    fn bad_return_paths_are_refused() {
        for template in [
            "bounces@bounce.acme.example",
            "b+{emailID}+{emailID}@x.example",
            "bounces@{emailID}.example",
            "not an address {emailID}",
        ] {
            assert!(ReturnPath::parse(template).is_err(), "{template}");
        }
    }

    #[test]
    fn message_ids_give_their_email() {
        let id = EmailId::generate();
        assert_eq!(
            email_of_message_id(&format!("<{id}@acme.example>")),
            Some(id)
        );
        assert_eq!(email_of_message_id(&format!("{id}@mailroom")), Some(id));
        assert_eq!(email_of_message_id("<CAF=abc@mail.gmail.com>"), None);
        assert_eq!(email_of_message_id(""), None);
    }
}
