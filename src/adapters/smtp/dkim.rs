//! DKIM signatures (RFC 6376, relaxed/relaxed; RFC 8463 for Ed25519) over the final
//! bytes of a message, with ring's constant-time RSA (PKCS#1 v1.5, blinded) and Ed25519.
//!
//! The signature covers the headers a reader sees and mailroom wrote (From, To, Cc,
//! Reply-To, Subject, Date, Message-ID, MIME-Version, Content-Type) and the email's
//! custom headers, each only when present; never Bcc (there is none in the message).
//! The key's private part stays in this module: it is never logged or shown.

use std::{collections::HashMap, fmt, path::Path};

use anyhow::{Context, bail};
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use ring::{
    digest::{SHA256, digest},
    rand::SystemRandom,
    rsa::PublicKeyComponents,
    signature::{self, Ed25519KeyPair, KeyPair, RsaKeyPair},
};
use rustls_pki_types::{PrivateKeyDer, pem::PemObject};

use crate::config::{DkimAlgorithm, DkimKeySettings, DkimSettings, dkim_domain};

/// The headers mailroom writes that a signature covers, in this order.
const SIGNED_HEADERS: [&str; 9] = [
    "From",
    "To",
    "Cc",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
];

/// Header lines are folded to stay under this many characters.
const LINE: usize = 76;

enum Key {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

struct DomainKey {
    domain: String,
    selector: String,
    key: Key,
}

/// The keys of `dkim.keys`, by domain.
pub struct DkimSigner {
    keys: HashMap<String, DomainKey>,
    random: SystemRandom,
}

impl fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The domains and selectors only: the keys are secrets.
        f.debug_list()
            .entries(
                self.keys
                    .values()
                    .map(|k| format!("{}._domainkey.{}", k.selector, k.domain)),
            )
            .finish()
    }
}

impl DkimSigner {
    /// Reads every key file; `None` when there are no keys.
    pub fn new(settings: &DkimSettings) -> anyhow::Result<Option<Self>> {
        if settings.keys.is_empty() {
            return Ok(None);
        }
        let mut keys = HashMap::new();
        for entry in &settings.keys {
            let domain = dkim_domain(&entry.domain)
                .with_context(|| format!("dkim key domain {:?}", entry.domain))?;
            let key = read_key(entry).with_context(|| {
                format!(
                    "the DKIM key of {} ({})",
                    entry.domain,
                    entry.private_key_file.display()
                )
            })?;
            keys.insert(
                domain.clone(),
                DomainKey {
                    domain,
                    selector: entry.selector.clone(),
                    key,
                },
            );
        }
        Ok(Some(DkimSigner {
            keys,
            random: SystemRandom::new(),
        }))
    }

    /// The `DKIM-Signature` header field (with its CRLF) for `message` (headers, a blank
    /// line, the body; CRLF line ends) sent from `domain`, signed at `timestamp` (Unix
    /// seconds); `None` when the domain has no key. `custom` names the email's own headers.
    pub fn sign(
        &self,
        domain: &str,
        message: &[u8],
        custom: &[&str],
        timestamp: i64,
    ) -> anyhow::Result<Option<String>> {
        let Some(key) = self.keys.get(&domain.to_ascii_lowercase()) else {
            return Ok(None);
        };
        let (head, body) = split(message);
        let fields = parse_fields(head);
        let body_hash = BASE64.encode(digest(&SHA256, &relaxed_body(body)));

        // The headers signed: each listed name present in the message, once (its last
        // occurrence, which is where a verifier starts).
        let mut names: Vec<&str> = Vec::new();
        let mut signed = String::new();
        for name in SIGNED_HEADERS.iter().copied().chain(custom.iter().copied()) {
            if names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                continue;
            }
            if let Some(field) = fields
                .iter()
                .rev()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                names.push(name);
                signed.push_str(&relaxed_header(field.0, field.1));
                signed.push_str("\r\n");
            }
        }
        let algorithm = match key.key {
            Key::Rsa(_) => DkimAlgorithm::RsaSha256,
            Key::Ed25519(_) => DkimAlgorithm::Ed25519Sha256,
        };
        let tags = [
            "v=1".to_owned(),
            format!("a={}", algorithm.as_str()),
            "c=relaxed/relaxed".to_owned(),
            format!("d={}", key.domain),
            format!("s={}", key.selector),
            format!("t={timestamp}"),
            format!(
                "h={}",
                names
                    .iter()
                    .map(|n| n.to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join(":")
            ),
            format!("bh={body_hash}"),
        ];
        // Signed with `b=` empty, exactly as the header is written (folding included):
        // a verifier canonicalises the same text.
        let unsigned = fold("DKIM-Signature", &tags, "");
        let (name, value) = unsigned.split_once(':').expect("a header field");
        signed.push_str(&relaxed_header(name, value.trim_end_matches("\r\n")));
        let signature = match &key.key {
            Key::Rsa(pair) => {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &self.random,
                    signed.as_bytes(),
                    &mut out,
                )
                .map_err(|_| anyhow::anyhow!("RSA signing failed"))?;
                out
            }
            // RFC 8463: Ed25519 signs the SHA-256 hash of the canonical headers.
            Key::Ed25519(pair) => pair
                .sign(digest(&SHA256, signed.as_bytes()).as_ref())
                .as_ref()
                .to_vec(),
        };
        Ok(Some(fold(
            "DKIM-Signature",
            &tags,
            &BASE64.encode(signature),
        )))
    }
}

/// A key file: PEM, PKCS#8 or (RSA) PKCS#1, of the configured algorithm.
fn read_key(entry: &DkimKeySettings) -> anyhow::Result<Key> {
    let der = PrivateKeyDer::from_pem_file(&entry.private_key_file)
        .map_err(|err| anyhow::anyhow!("not a PEM private key: {err}"))?;
    key_of(entry.algorithm, &der)
}

fn key_of(algorithm: DkimAlgorithm, der: &PrivateKeyDer<'_>) -> anyhow::Result<Key> {
    match (algorithm, der) {
        (DkimAlgorithm::RsaSha256, PrivateKeyDer::Pkcs8(der)) => {
            RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
                .map(Key::Rsa)
                .map_err(|err| anyhow::anyhow!("not an RSA key of 2048 to 4096 bits: {err}"))
        }
        (DkimAlgorithm::RsaSha256, PrivateKeyDer::Pkcs1(der)) => {
            RsaKeyPair::from_der(der.secret_pkcs1_der())
                .map(Key::Rsa)
                .map_err(|err| anyhow::anyhow!("not an RSA key of 2048 to 4096 bits: {err}"))
        }
        (DkimAlgorithm::Ed25519Sha256, PrivateKeyDer::Pkcs8(der)) => {
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
                .map(Key::Ed25519)
                .map_err(|err| anyhow::anyhow!("not an Ed25519 key: {err}"))
        }
        (algorithm, _) => bail!("not a {} key", algorithm.as_str()),
    }
}

/// The base64 public key of a key file, for its DNS record's `p=` tag.
pub fn public_key_of_pem(algorithm: DkimAlgorithm, pem: &[u8]) -> anyhow::Result<String> {
    let der = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|err| anyhow::anyhow!("not a PEM private key: {err}"))?;
    Ok(match key_of(algorithm, &der)? {
        // RFC 6376 3.6.1: a SubjectPublicKeyInfo, as `openssl rsa -pubout` writes it.
        Key::Rsa(pair) => {
            let components: PublicKeyComponents<Vec<u8>> = pair.public().into();
            BASE64.encode(rsa_spki(&components.n, &components.e))
        }
        // RFC 8463: the raw 32 bytes.
        Key::Ed25519(pair) => BASE64.encode(pair.public_key().as_ref()),
    })
}

/// DER of an RSA SubjectPublicKeyInfo for modulus `n` and exponent `e` (big-endian).
fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn length(len: usize) -> Vec<u8> {
        match len {
            0..=127 => vec![len as u8],
            128..=255 => vec![0x81, len as u8],
            _ => vec![0x82, (len >> 8) as u8, len as u8],
        }
    }
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend(length(content.len()));
        out.extend_from_slice(content);
        out
    }
    fn integer(bytes: &[u8]) -> Vec<u8> {
        let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|&b| b == 0).collect();
        let mut content = Vec::with_capacity(trimmed.len() + 1);
        if trimmed.first().is_none_or(|&b| b & 0x80 != 0) {
            content.push(0);
        }
        content.extend(trimmed);
        tlv(0x02, &content)
    }
    // rsaEncryption (1.2.840.113549.1.1.1) with NULL parameters.
    const ALGORITHM: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let public_key = tlv(0x30, &[integer(n), integer(e)].concat());
    let mut bits = vec![0];
    bits.extend(public_key);
    tlv(0x30, &[ALGORITHM.to_vec(), tlv(0x03, &bits)].concat())
}

/// Header block and body of a message (split at the first empty line).
fn split(message: &[u8]) -> (&str, &[u8]) {
    let at = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 2)
        .unwrap_or(message.len());
    let head = std::str::from_utf8(&message[..at]).unwrap_or("");
    let body = message.get(at + 2..).unwrap_or_default();
    (head, body)
}

/// The header fields of a header block, each as (name, value with its folds).
fn parse_fields(head: &str) -> Vec<(&str, &str)> {
    let mut fields = Vec::new();
    let mut start = 0;
    let bytes = head.as_bytes();
    let mut i = 0;
    while i + 1 < bytes.len() {
        // A field ends at a CRLF not followed by white space (a fold).
        if bytes[i] == b'\r'
            && bytes[i + 1] == b'\n'
            && !matches!(bytes.get(i + 2), Some(b' ' | b'\t'))
        {
            if let Some((name, value)) = head[start..i].split_once(':') {
                fields.push((name, value));
            }
            start = i + 2;
            i += 2;
            continue;
        }
        i += 1;
    }
    fields
}

/// RFC 6376 3.4.2: the name lowercased, the value unfolded, runs of white space one
/// space, none at either end; `name:value` without the CRLF.
fn relaxed_header(name: &str, value: &str) -> String {
    let mut out = name.trim_end().to_ascii_lowercase();
    out.push(':');
    let unfolded = value.replace("\r\n", "");
    let mut space = false;
    for c in unfolded.trim_matches([' ', '\t']).chars() {
        if c == ' ' || c == '\t' {
            space = true;
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
    }
    out
}

/// RFC 6376 3.4.4: white space at line ends removed, runs of it one space, the empty
/// lines at the end removed; an empty body stays empty.
fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    // A body ending in CRLF splits into a last, empty, piece that is no line.
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut pending_empty = 0;
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut canonical = Vec::with_capacity(line.len());
        let mut space = false;
        for &b in line {
            if b == b' ' || b == b'\t' {
                space = true;
                continue;
            }
            if space {
                canonical.push(b' ');
                space = false;
            }
            canonical.push(b);
        }
        if canonical.is_empty() {
            pending_empty += 1;
            continue;
        }
        for _ in 0..pending_empty {
            out.extend_from_slice(b"\r\n");
        }
        pending_empty = 0;
        out.extend_from_slice(&canonical);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A header field of `tags` and then `b=` with `signature`, folded between tags, after
/// the colons of a long `h=` list and inside the signature, so no line is longer than
/// [`LINE`] (fifty custom headers of 76-character names would otherwise make one line
/// of some 4,000 characters, past SMTP's 998).
fn fold(name: &str, tags: &[String], signature: &str) -> String {
    let mut out = format!("{name}:");
    let mut line = out.len();
    for tag in tags.iter().map(|t| format!("{t};")) {
        for (index, piece) in tag.split_inclusive(':').enumerate() {
            let space = usize::from(index == 0);
            if line + space + piece.len() > LINE && line > 1 {
                out.push_str("\r\n\t");
                line = 1;
            } else if space == 1 {
                out.push(' ');
                line += 1;
            }
            out.push_str(piece);
            line += piece.len();
        }
    }
    out.push_str("\r\n\tb=");
    line = 3;
    let mut rest = signature;
    while !rest.is_empty() {
        let room = LINE.saturating_sub(line).max(1);
        let (chunk, tail) = rest.split_at(room.min(rest.len()));
        out.push_str(chunk);
        rest = tail;
        if !rest.is_empty() {
            out.push_str("\r\n\t");
            line = 1;
        }
    }
    out.push_str("\r\n");
    out
}

/// Writes a new key of `algorithm` to `path` (mode 0600; refuses to replace a file)
/// and answers the base64 public key for the DNS record.
pub fn generate_key(algorithm: DkimAlgorithm, path: &Path) -> anyhow::Result<String> {
    let pem = match algorithm {
        DkimAlgorithm::RsaSha256 => {
            use rsa::pkcs8::{EncodePrivateKey, LineEnding};
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .context("generating an RSA key")?;
            key.to_pkcs8_pem(LineEnding::LF)
                .context("encoding the RSA key")?
                .to_string()
        }
        DkimAlgorithm::Ed25519Sha256 => {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("generating an Ed25519 key failed"))?;
            pem_of("PRIVATE KEY", pkcs8.as_ref())
        }
    };
    let public = public_key_of_pem(algorithm, pem.as_bytes())?;
    write_secret(path, pem.as_bytes())?;
    Ok(public)
}

fn pem_of(label: &str, der: &[u8]) -> String {
    let body = BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Creates `path` readable by its owner only, with `bytes`; an existing file is kept.
fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| {
        format!(
            "creating {} (an existing key file is never replaced)",
            path.display()
        )
    })?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// The DNS TXT record of a key: its name and its value, the value in quoted chunks of
/// at most 255 characters as one TXT record holds them.
pub fn dns_record(domain: &str, selector: &str, algorithm: DkimAlgorithm, public: &str) -> String {
    let value = format!("v=DKIM1; k={}; p={public}", algorithm.key_type());
    let chunks: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", std::str::from_utf8(c).expect("ASCII")))
        .collect();
    format!("{selector}._domainkey.{domain} IN TXT {}", chunks.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaxed_headers_lowercase_unfold_and_squeeze() {
        assert_eq!(
            relaxed_header("Subject", " Hello \r\n\t  world  "),
            "subject:Hello world"
        );
        assert_eq!(relaxed_header("To ", "a@b"), "to:a@b");
    }

    #[test]
    fn relaxed_bodies_drop_trailing_space_and_empty_lines() {
        assert_eq!(
            relaxed_body(b"a  b \r\n\r\n c\t\r\n\r\n\r\n"),
            b"a b\r\n\r\n c\r\n"
        );
        assert_eq!(relaxed_body(b""), b"");
        assert_eq!(relaxed_body(b"\r\n\r\n"), b"");
        assert_eq!(relaxed_body(b"no newline"), b"no newline\r\n");
    }

    #[test]
    fn header_fields_are_split_at_unfolded_line_ends() {
        let head = "From: a@b\r\nSubject: one\r\n two\r\nTo: c@d\r\n";
        assert_eq!(
            parse_fields(head),
            vec![
                ("From", " a@b"),
                ("Subject", " one\r\n two"),
                ("To", " c@d")
            ]
        );
    }

    #[test]
    fn folded_lines_stay_short_and_canonicalise_as_they_were_signed() {
        let tags: Vec<String> = (0..12).map(|i| format!("t{i}=value-{i}")).collect();
        let unsigned = fold("DKIM-Signature", &tags, "");
        let signed = fold("DKIM-Signature", &tags, &"A".repeat(344));
        for line in signed.trim_end().split("\r\n") {
            assert!(line.len() <= LINE, "{line:?}");
        }
        // A verifier deletes the value of b= (folds included), then canonicalises.
        let at = signed.find("\r\n\tb=").unwrap() + "\r\n\tb=".len();
        let stripped = format!("{}\r\n", &signed[..at]);
        assert_eq!(stripped, unsigned);
        let canonical = |h: &str| {
            let (name, value) = h.split_once(':').unwrap();
            relaxed_header(name, value.trim_end_matches("\r\n"))
        };
        assert!(canonical(&unsigned).ends_with("; b="));
    }

    #[test]
    fn a_long_header_list_is_folded_after_its_colons() {
        let names: Vec<String> = (0..50)
            .map(|i| format!("X-{i:02}-{}", "n".repeat(70)))
            .collect();
        let tags = vec!["v=1".to_owned(), format!("h=from:{}", names.join(":"))];
        let header = fold("DKIM-Signature", &tags, "QUJD");
        // A line holds one name when it cannot hold two: at most a tab, a 76-character
        // name (the longest allowed) and its colon, RFC 5322's 78.
        for line in header.trim_end().split("\r\n") {
            assert!(line.len() <= 78, "{} characters: {line:?}", line.len());
        }
        // Unfolded, the list is whole again (a verifier drops the white space around
        // its colons).
        let unfolded: String = header.replace("\r\n\t", "");
        assert!(unfolded.contains(&format!("h=from:{};", names.join(":"))));
    }

    #[test]
    fn an_rsa_public_key_is_a_subject_public_key_info() {
        // A tiny key by hand: modulus 0xC5 (high bit set, so a 0 goes before it),
        // exponent 65537.
        let spki = rsa_spki(&[0xc5], &[0x01, 0x00, 0x01]);
        assert_eq!(
            hex::encode(spki),
            "301d300d06092a864886f70d0101010500030c003009020200c50203010001"
        );
    }

    #[test]
    fn dns_records_split_long_values_into_quoted_chunks() {
        let record = dns_record(
            "acme.example",
            "s1",
            DkimAlgorithm::RsaSha256,
            &"A".repeat(400),
        );
        let (name, value) = record.split_once(" IN TXT ").unwrap();
        assert_eq!(name, "s1._domainkey.acme.example");
        let chunks: Vec<&str> = value.split('"').skip(1).step_by(2).collect();
        assert_eq!(chunks.len(), 2);
        assert!(chunks.iter().all(|c| c.len() <= 255));
        assert_eq!(
            chunks.concat(),
            format!("v=DKIM1; k=rsa; p={}", "A".repeat(400))
        );
    }
}
