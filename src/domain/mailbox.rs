//! Mailboxes (an address with an optional display name, `Acme Billing
//! <billing@acme.example>`) and lists of them in header form (`a@x.example, "Doe, Jo"
//! <jo@y.example>`), as callers write them in `from`, `to`, `cc`, `bcc` and `replyTo`.
//!
//! The text form is RFC 5322's, with display names in any Unicode (RFC 6532): a name
//! with specials (`,` `;` `@` `"` …) is quoted, so the form mailroom writes back parses to
//! the same mailboxes. Encoding names for the wire (RFC 2047) is the SMTP adapter's job.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Address, AddressError};

/// Most characters in a display name.
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;

/// Why a text is not a mailbox (or a list of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MailboxError {
    #[error("{0}")]
    Address(AddressError),
    #[error("has a display name with control characters or line breaks")]
    NameControlCharacters,
    #[error("has a display name longer than 256 characters")]
    NameTooLong,
    #[error("has an unbalanced quote or angle bracket")]
    Unbalanced,
    #[error("has characters outside the quotes of its display name that need quoting (\", <, >)")]
    NameNeedsQuotes,
    #[error("holds more than one address (give one per item)")]
    SeveralAddresses,
}

impl MailboxError {
    /// A stable machine-readable code for the violation.
    pub fn code(self) -> &'static str {
        match self {
            MailboxError::Address(err) => err.code(),
            MailboxError::NameControlCharacters => "control_characters",
            MailboxError::NameTooLong => "length",
            MailboxError::Unbalanced | MailboxError::NameNeedsQuotes => "address",
            MailboxError::SeveralAddresses => "one_address",
        }
    }
}

/// An address with an optional display name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mailbox {
    pub name: Option<String>,
    pub address: Address,
}

impl Mailbox {
    pub fn new(name: Option<String>, address: Address) -> Self {
        Mailbox {
            name: name.filter(|n| !n.is_empty()),
            address,
        }
    }

    /// Exactly one mailbox: `user@domain` or `Name <user@domain>`.
    pub fn parse(raw: &str) -> Result<Self, MailboxError> {
        let mut items = split_list(raw)?;
        match items.len() {
            1 => parse_item(items.remove(0)),
            0 => Err(MailboxError::Address(AddressError::Length)),
            _ => Err(MailboxError::SeveralAddresses),
        }
    }

    /// The key recipients are told apart by: the address, case aside.
    pub fn dedup_key(&self) -> String {
        self.address.as_str().to_lowercase()
    }
}

/// A list in header form, item by item: each item parsed on its own, so one bad item
/// is reported by its position while the others still count. Empty items (`a@x,,b@y`,
/// a trailing comma) are skipped.
pub fn parse_list(raw: &str) -> Result<Vec<Result<Mailbox, MailboxError>>, MailboxError> {
    Ok(split_list(raw)?.into_iter().map(parse_item).collect())
}

/// Mailboxes written as one header value, `, ` apart.
pub fn format_list(mailboxes: &[Mailbox]) -> String {
    let mut out = String::new();
    for (i, mailbox) in mailboxes.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&mailbox.to_string());
    }
    out
}

/// The items of a list: cut at commas outside quotes and angle brackets.
fn split_list(raw: &str) -> Result<Vec<&str>, MailboxError> {
    let mut items = Vec::new();
    let (mut quoted, mut escaped, mut angle) = (false, false, false);
    let mut start = 0;
    for (at, c) in raw.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => {
                if angle {
                    return Err(MailboxError::Unbalanced);
                }
                angle = true;
            }
            '>' if !quoted => {
                if !angle {
                    return Err(MailboxError::Unbalanced);
                }
                angle = false;
            }
            ',' if !quoted && !angle => {
                items.push(&raw[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    if quoted || angle || escaped {
        return Err(MailboxError::Unbalanced);
    }
    items.push(&raw[start..]);
    Ok(items
        .into_iter()
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect())
}

/// One item: `addr-spec`, or `[display-name] <addr-spec>`.
fn parse_item(item: &str) -> Result<Mailbox, MailboxError> {
    let Some(open) = angle_start(item) else {
        return Address::parse(item)
            .map(|address| Mailbox::new(None, address))
            .map_err(MailboxError::Address);
    };
    let inner = item[open + 1..]
        .strip_suffix('>')
        .ok_or(MailboxError::Unbalanced)?;
    let address = Address::parse(inner.trim()).map_err(MailboxError::Address)?;
    let name = display_name(item[..open].trim())?;
    Ok(Mailbox::new(name, address))
}

/// Where the `<` of an item's address is (outside quotes), if it has one.
fn angle_start(item: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (at, c) in item.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => return Some(at),
            _ => {}
        }
    }
    None
}

/// A display name as written: a quoted string (its escapes undone), or plain words.
fn display_name(raw: &str) -> Result<Option<String>, MailboxError> {
    let name = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) if raw.len() >= 2 => {
            let mut name = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => name.extend(chars.next()),
                    '"' => return Err(MailboxError::NameNeedsQuotes),
                    c => name.push(c),
                }
            }
            name
        }
        _ => {
            if raw.contains(['"', '<', '>']) {
                return Err(MailboxError::NameNeedsQuotes);
            }
            raw.to_owned()
        }
    };
    if name.chars().any(char::is_control) {
        return Err(MailboxError::NameControlCharacters);
    }
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(MailboxError::NameTooLong);
    }
    let name = name.trim().to_owned();
    Ok((!name.is_empty()).then_some(name))
}

/// Whether a display name must be quoted to read back as itself.
fn needs_quotes(name: &str) -> bool {
    name.chars().any(|c| "()<>[]:;@\\,.\"".contains(c))
        || name.starts_with(' ')
        || name.ends_with(' ')
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            None => write!(f, "{}", self.address),
            Some(name) if needs_quotes(name) => {
                f.write_str("\"")?;
                for c in name.chars() {
                    if c == '"' || c == '\\' {
                        f.write_str("\\")?;
                    }
                    write!(f, "{c}")?;
                }
                write!(f, "\" <{}>", self.address)
            }
            Some(name) => write!(f, "{name} <{}>", self.address),
        }
    }
}

impl TryFrom<String> for Mailbox {
    type Error = MailboxError;

    fn try_from(raw: String) -> Result<Self, MailboxError> {
        Mailbox::parse(&raw)
    }
}

impl From<Mailbox> for String {
    fn from(mailbox: Mailbox) -> String {
        mailbox.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(raw: &str) -> Vec<Mailbox> {
        parse_list(raw)
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn a_header_form_list_splits_at_commas_outside_quotes_and_brackets() {
        let parsed = list(
            r#"a@x.example, "Doe, Jo" <jo@y.example>,Acme Billing <billing@acme.example>, "odd,"@z.example"#,
        );
        let shown: Vec<(Option<&str>, &str)> = parsed
            .iter()
            .map(|m| (m.name.as_deref(), m.address.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                (None, "a@x.example"),
                (Some("Doe, Jo"), "jo@y.example"),
                (Some("Acme Billing"), "billing@acme.example"),
                (None, "\"odd,\"@z.example"),
            ]
        );
    }

    #[test]
    fn the_written_form_reads_back_as_the_same_mailboxes() {
        for raw in [
            r#""Doe, Jo" <jo@y.example>"#,
            r#""Say \"hi\"" <a@b.example>"#,
            "Zoë Ångström <zoe@bücher.example>",
            "<bare@x.example>",
            "plain@x.example",
        ] {
            let mailbox = Mailbox::parse(raw).unwrap();
            assert_eq!(
                Mailbox::parse(&mailbox.to_string()).unwrap(),
                mailbox,
                "{raw}"
            );
        }
        assert_eq!(
            Mailbox::parse("<bare@x.example>").unwrap().to_string(),
            "bare@x.example"
        );
        let two = list("A <a@x.example>, \"B, b\" <b@x.example>");
        assert_eq!(format_list(&two), "A <a@x.example>, \"B, b\" <b@x.example>");
    }

    #[test]
    fn bad_items_say_what_is_wrong() {
        assert_eq!(
            Mailbox::parse("a@x.example, b@x.example"),
            Err(MailboxError::SeveralAddresses)
        );
        assert_eq!(
            Mailbox::parse("Jo <jo@x.example"),
            Err(MailboxError::Unbalanced)
        );
        assert_eq!(
            Mailbox::parse("\"Jo <jo@x.example>"),
            Err(MailboxError::Unbalanced)
        );
        assert_eq!(
            Mailbox::parse("Jo \"J\" <jo@x.example>"),
            Err(MailboxError::NameNeedsQuotes)
        );
        assert_eq!(
            Mailbox::parse("\"Jo\r\nBcc: x@y.z\" <jo@x.example>"),
            Err(MailboxError::NameControlCharacters)
        );
        assert_eq!(
            Mailbox::parse("Jo <not an address>"),
            Err(MailboxError::Address(AddressError::Malformed))
        );
        let items = parse_list("a@x.example, nope, ,c@x.example,").unwrap();
        assert_eq!(items.len(), 3);
        assert!(items[1].is_err());
    }
}
