//! The parts of a message beyond its addresses and bodies: attachments (and inline
//! images), custom headers and tags, with the rules each must follow. What the caller
//! sent becomes these types only through `validation`.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Most attachments in one email.
pub const MAX_ATTACHMENTS: usize = 100;
/// Most characters in an attachment's file name.
pub const MAX_FILENAME_CHARS: usize = 255;
/// Most characters in a content id.
pub const MAX_CONTENT_ID_CHARS: usize = 250;
/// Most custom headers in one email.
pub const MAX_HEADERS: usize = 50;
/// Most bytes in a custom header's value (RFC 5322's line limit).
pub const MAX_HEADER_VALUE_BYTES: usize = 998;
/// Most tags on one email.
pub const MAX_TAGS: usize = 10;
/// Most characters in a tag's name.
pub const MAX_TAG_NAME_CHARS: usize = 64;
/// Most characters in a tag's value.
pub const MAX_TAG_VALUE_CHARS: usize = 256;

/// Headers mailroom writes itself, which a caller may not set (compared without case).
/// `Content-*` are refused as a family.
pub const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "return-path",
    "received",
    "dkim-signature",
];

/// An attachment as it is stored and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub meta: AttachmentMeta,
    pub content: Bytes,
}

impl Attachment {
    pub fn new(
        filename: String,
        content_type: String,
        content_id: Option<String>,
        content: Bytes,
    ) -> Self {
        let meta = AttachmentMeta {
            filename,
            content_type,
            size: content.len() as u64,
            content_id,
            sha256: hex::encode(Sha256::digest(&content)),
        };
        Attachment { meta, content }
    }
}

/// What is known of an attachment without its bytes: what reads return.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentMeta {
    pub filename: String,
    pub content_type: String,
    /// Decoded bytes.
    pub size: u64,
    /// Set for inline parts (`cid:` in the HTML), without angle brackets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
    /// Of the content, in lowercase hex: tells an idempotent replay from a conflict.
    pub sha256: String,
}

impl AttachmentMeta {
    pub fn is_inline(&self) -> bool {
        self.content_id.is_some()
    }
}

/// A custom header, as the caller named it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// Tags: names to values, kept sorted by name.
pub type Tags = BTreeMap<String, String>;

/// Why an attachment file name is refused, if it is.
pub fn filename_problem(name: &str) -> Option<(&'static str, &'static str)> {
    if name.is_empty() || name.chars().count() > MAX_FILENAME_CHARS {
        return Some(("length", "must be 1 to 255 characters"));
    }
    if name.contains(['\r', '\n']) || name.chars().any(char::is_control) {
        return Some((
            "control_characters",
            "must not contain control characters or line breaks",
        ));
    }
    if name.contains(['/', '\\']) {
        return Some((
            "path_separator",
            "must be a file name, without path separators (/ or \\)",
        ));
    }
    if name == "." || name == ".." || name.trim().is_empty() {
        return Some(("filename", "must name a file"));
    }
    None
}

/// Why a content type is refused, if it is: it must be `type/subtype`, with parameters
/// if any, as MIME writes it.
pub fn content_type_problem(content_type: &str) -> Option<(&'static str, &'static str)> {
    let parsed = content_type.parse::<mime::Mime>();
    match parsed {
        Ok(mime) if mime.type_() != mime::MULTIPART => None,
        Ok(_) => Some((
            "content_type",
            "must not be multipart (mailroom builds the MIME structure itself)",
        )),
        Err(_) => Some((
            "content_type",
            "must be a MIME type like application/pdf or image/png",
        )),
    }
}

/// The content type guessed from a file name (`application/octet-stream` when the
/// extension says nothing).
pub fn guess_content_type(filename: &str) -> String {
    mime_guess::from_path(filename)
        .first_or_octet_stream()
        .essence_str()
        .to_owned()
}

/// Why a content id is refused, if it is: printable ASCII without spaces or angle
/// brackets (mailroom adds those), as in `logo` or `logo@acme.example`.
pub fn content_id_problem(id: &str) -> Option<(&'static str, &'static str)> {
    if id.is_empty() || id.chars().count() > MAX_CONTENT_ID_CHARS {
        return Some(("length", "must be 1 to 250 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
    {
        return Some((
            "content_id",
            "must be printable ASCII without spaces or angle brackets",
        ));
    }
    None
}

/// Why a custom header's name is refused, if it is.
pub fn header_name_problem(name: &str) -> Option<(&'static str, &'static str)> {
    if name.is_empty() || name.len() > 76 {
        return Some(("length", "must be 1 to 76 characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Some((
            "header_name",
            "must be printable ASCII without spaces or colons",
        ));
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("content-") || RESERVED_HEADERS.contains(&lower.as_str()) {
        return Some((
            "reserved_header",
            "is written by mailroom itself and cannot be set",
        ));
    }
    None
}

/// Why a custom header's value is refused, if it is.
pub fn header_value_problem(value: &str) -> Option<(&'static str, &'static str)> {
    if value.contains(['\r', '\n']) {
        return Some(("line_break", "must not contain line breaks (CR or LF)"));
    }
    if value.chars().any(char::is_control) {
        return Some(("control_characters", "must not contain control characters"));
    }
    if value.len() > MAX_HEADER_VALUE_BYTES {
        return Some(("length", "must be at most 998 bytes"));
    }
    None
}

/// Why a tag's name is refused, if it is.
pub fn tag_name_problem(name: &str) -> Option<(&'static str, &'static str)> {
    let ok = (1..=MAX_TAG_NAME_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    (!ok).then_some((
        "tag_name",
        "must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -",
    ))
}

/// Why a tag's value is refused, if it is.
pub fn tag_value_problem(value: &str) -> Option<(&'static str, &'static str)> {
    if value.chars().count() > MAX_TAG_VALUE_CHARS {
        return Some(("length", "must be at most 256 characters"));
    }
    if value.chars().any(char::is_control) {
        return Some(("control_characters", "must be printable characters"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_names_not_paths() {
        for ok in ["invoice.pdf", "Rechnung März.pdf", "a b.txt", "..hidden"] {
            assert_eq!(filename_problem(ok), None, "{ok}");
        }
        for (bad, code) in [
            ("", "length"),
            ("../etc/passwd", "path_separator"),
            ("C:\\boot.ini", "path_separator"),
            ("a\r\nContent-Type: text/html", "control_characters"),
            ("..", "filename"),
            (" ", "filename"),
        ] {
            assert_eq!(filename_problem(bad).map(|p| p.0), Some(code), "{bad:?}");
        }
        assert_eq!(
            filename_problem(&"x".repeat(256)).map(|p| p.0),
            Some("length")
        );
    }

    #[test]
    fn content_types_are_mime_types_and_guessed_from_the_name() {
        assert_eq!(content_type_problem("application/pdf"), None);
        assert_eq!(content_type_problem("text/plain; charset=utf-8"), None);
        assert!(content_type_problem("pdf").is_some());
        assert!(content_type_problem("multipart/mixed").is_some());
        assert_eq!(guess_content_type("invoice.PDF"), "application/pdf");
        assert_eq!(guess_content_type("logo.png"), "image/png");
        assert_eq!(guess_content_type("notes"), "application/octet-stream");
    }

    #[test]
    fn headers_mailroom_writes_cannot_be_set() {
        assert_eq!(header_name_problem("X-Campaign"), None);
        assert_eq!(header_name_problem("List-Unsubscribe"), None);
        for reserved in [
            "From",
            "bcc",
            "Message-ID",
            "Content-Type",
            "content-transfer-encoding",
            "DKIM-Signature",
        ] {
            assert_eq!(
                header_name_problem(reserved).map(|p| p.0),
                Some("reserved_header"),
                "{reserved}"
            );
        }
        assert_eq!(
            header_name_problem("X Bad").map(|p| p.0),
            Some("header_name")
        );
        assert_eq!(
            header_name_problem("X:Bad").map(|p| p.0),
            Some("header_name")
        );
        assert_eq!(
            header_value_problem("a\r\nBcc: x@y.z").map(|p| p.0),
            Some("line_break")
        );
        assert_eq!(header_value_problem(&"v".repeat(998)), None);
        assert_eq!(
            header_value_problem(&"v".repeat(999)).map(|p| p.0),
            Some("length")
        );
    }

    #[test]
    fn tags_are_short_names_and_printable_values() {
        assert_eq!(tag_name_problem("campaign_2026-12"), None);
        assert!(tag_name_problem("has space").is_some());
        assert!(tag_name_problem(&"n".repeat(65)).is_some());
        assert_eq!(tag_value_problem("Spring sale ☀"), None);
        assert!(tag_value_problem("a\tb").is_some());
        assert!(tag_value_problem(&"v".repeat(257)).is_some());
    }
}
