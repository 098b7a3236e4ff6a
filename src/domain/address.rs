//! Email addresses (RFC 5322 addr-specs, `user@domain`), checked once at the edge so the
//! rest of mailroom only ever holds valid ones. The rules are those of the
//! `email_address` crate for the local part and the domain, with internationalised
//! domains allowed (they become punycode on the wire) and IP literals (`user@[10.0.0.1]`).

use std::{fmt, net::IpAddr, str::FromStr};

use email_address::EmailAddress;
use serde::{Deserialize, Serialize};

/// Most characters in an address (RFC 5321's path limit).
pub const MAX_ADDRESS_CHARS: usize = 254;

/// Why a text is not an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("must be 1 to 254 characters")]
    Length,
    #[error("must not contain control characters")]
    ControlCharacters,
    #[error("is not an email address (like user@example.com)")]
    Malformed,
}

impl AddressError {
    /// A stable machine-readable code for the violation.
    pub fn code(self) -> &'static str {
        match self {
            AddressError::Length => "length",
            AddressError::ControlCharacters => "control_characters",
            AddressError::Malformed => "address",
        }
    }
}

/// A valid address, kept as the caller wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address {
    text: String,
    /// Where the `@` between the local part and the domain is.
    at: usize,
}

impl Address {
    pub fn parse(raw: &str) -> Result<Self, AddressError> {
        let chars = raw.chars().count();
        if chars == 0 || chars > MAX_ADDRESS_CHARS {
            return Err(AddressError::Length);
        }
        if raw.chars().any(char::is_control) {
            return Err(AddressError::ControlCharacters);
        }
        let at = raw.rfind('@').ok_or(AddressError::Malformed)?;
        let (local, domain) = (&raw[..at], &raw[at + 1..]);
        if !EmailAddress::is_valid_local_part(local) || !valid_domain(domain) {
            return Err(AddressError::Malformed);
        }
        Ok(Address {
            text: raw.to_owned(),
            at,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn local_part(&self) -> &str {
        &self.text[..self.at]
    }

    pub fn domain(&self) -> &str {
        &self.text[self.at + 1..]
    }

    /// The domain as it goes on the wire: an internationalised one in punycode.
    pub fn ascii_domain(&self) -> String {
        let domain = self.domain();
        if domain.is_ascii() {
            return domain.to_owned();
        }
        // Checked by `parse`: a non-ASCII domain has an ASCII form.
        idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_owned())
    }

    /// The address as it goes on the wire: the local part as written, the domain in its
    /// ASCII form.
    pub fn ascii(&self) -> String {
        format!("{}@{}", self.local_part(), self.ascii_domain())
    }
}

/// A host name or an IP literal. An internationalised name must have a valid ASCII
/// (punycode) form, the one it goes on the wire in: `email_address` alone would take
/// names whose IDNA mapping is no host name (a no-break space becomes a space).
fn valid_domain(domain: &str) -> bool {
    let ascii_ok = |domain: &str| {
        if EmailAddress::is_valid_domain(domain) {
            return true;
        }
        let ip = domain
            .strip_prefix('[')
            .and_then(|ip| ip.strip_suffix(']'))
            .unwrap_or(domain);
        ip.parse::<IpAddr>().is_ok()
    };
    if domain.is_ascii() {
        ascii_ok(domain)
    } else {
        idna::domain_to_ascii(domain).is_ok_and(|ascii| ascii.is_ascii() && ascii_ok(&ascii))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl AsRef<str> for Address {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(raw: &str) -> Result<Self, AddressError> {
        Address::parse(raw)
    }
}

impl TryFrom<String> for Address {
    type Error = AddressError;

    fn try_from(raw: String) -> Result<Self, AddressError> {
        Address::parse(&raw)
    }
}

impl From<Address> for String {
    fn from(address: Address) -> String {
        address.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_splits_at_its_last_at_sign() {
        let address = Address::parse("\"a@b\"@example.com").unwrap();
        assert_eq!(address.local_part(), "\"a@b\"");
        assert_eq!(address.domain(), "example.com");
        assert_eq!(address.to_string(), "\"a@b\"@example.com");
    }

    #[test]
    fn international_domains_and_ip_literals_are_addresses() {
        for ok in [
            "jo@bücher.example",
            "jo@[127.0.0.1]",
            "jo@[::1]",
            "a.b+c@x-y.example",
        ] {
            assert!(Address::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn what_is_not_an_address_says_why() {
        assert_eq!(Address::parse(""), Err(AddressError::Length));
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Address::parse(&long), Err(AddressError::Length));
        assert_eq!(
            Address::parse("a@b.c\r\nBcc: x@y.z"),
            Err(AddressError::ControlCharacters)
        );
        for bad in ["not-an-address", "a@", "@b.c", "a b@c.d", "Alice <a@b.c>"] {
            assert_eq!(Address::parse(bad), Err(AddressError::Malformed), "{bad}");
        }
    }
}
