//! Reading the reports that come back about sent mail, with a real MIME parser
//! (mail-parser): delivery status notifications (RFC 3464, `multipart/report;
//! report-type=delivery-status`) and complaints in the Abuse Reporting Format (RFC 5965,
//! `report-type=feedback-report`).
//!
//! A report is a `multipart/report` whose parts are a human-readable text, the
//! machine-readable fields (`message/delivery-status` or `message/feedback-report`: blocks
//! of header fields, one per message and one per recipient), and the returned message
//! (`message/rfc822`) or its headers (`text/rfc822-headers`), where the Message-ID that
//! names the email is.

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use sha2::{Digest, Sha256};

use crate::domain::{Address, Report, ReportKind, ReportedRecipient, Verdict};

/// Why a body is not a report mailroom can read; said to the caller as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotAReport(String);

fn not_a_report(why: impl Into<String>) -> NotAReport {
    NotAReport(why.into())
}

/// Reads a raw report.
pub fn parse(raw: &[u8]) -> Result<Report, NotAReport> {
    let message = MessageParser::default()
        .parse(raw)
        .filter(|message| !message.headers().is_empty())
        .ok_or_else(|| not_a_report("the body is not a MIME message"))?;
    let content_type = message
        .content_type()
        .ok_or_else(|| not_a_report("the message has no Content-Type: not a multipart/report"))?;
    let report_type = content_type.attribute("report-type").unwrap_or_default();
    let is_report = content_type.ctype().eq_ignore_ascii_case("multipart")
        && content_type
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("report"));
    let kind = match (is_report, report_type.to_ascii_lowercase().as_str()) {
        (true, "delivery-status") => ReportKind::DeliveryStatus,
        (true, "feedback-report") => ReportKind::Complaint,
        _ => {
            return Err(not_a_report(format!(
                "the message is {}/{}{}: not a multipart/report with report-type \
                 delivery-status or feedback-report",
                content_type.ctype(),
                content_type.subtype().unwrap_or_default(),
                if report_type.is_empty() {
                    String::new()
                } else {
                    format!("; report-type={report_type}")
                }
            )));
        }
    };

    let mut fields = None;
    let mut returned: Option<Returned> = None;
    for part in message.parts.iter().skip(1) {
        let Some(part_type) = part.content_type() else {
            continue;
        };
        let mime = format!(
            "{}/{}",
            part_type.ctype().to_ascii_lowercase(),
            part_type.subtype().unwrap_or_default().to_ascii_lowercase()
        );
        match (mime.as_str(), &part.body) {
            (
                "message/delivery-status"
                | "message/global-delivery-status"
                | "message/feedback-report",
                _,
            ) if fields.is_none() => fields = Some(part.contents().to_vec()),
            (_, PartType::Message(original)) if returned.is_none() => {
                returned = Some(Returned::of(original));
            }
            ("text/rfc822-headers" | "message/rfc822-headers", _) if returned.is_none() => {
                if let Some(headers) = MessageParser::default().parse_headers(part.contents()) {
                    returned = Some(Returned::of(&headers));
                }
            }
            _ => {}
        }
    }
    let fields = fields.ok_or_else(|| {
        not_a_report(match kind {
            ReportKind::DeliveryStatus => "the report has no message/delivery-status part",
            ReportKind::Complaint => "the report has no message/feedback-report part",
        })
    })?;
    let blocks = field_blocks(&fields);
    let returned = returned.unwrap_or_default();

    let mut return_paths: Vec<String> = ["To", "Delivered-To", "X-Original-To"]
        .into_iter()
        .flat_map(|name| header_addresses(&message, name))
        .collect();
    return_paths.extend(returned.return_path.iter().cloned());

    let recipients = match kind {
        ReportKind::DeliveryStatus => {
            let recipients = delivery_recipients(&blocks);
            if blocks.len() < 2 && recipients.is_empty() {
                return Err(not_a_report(
                    "the delivery-status part has no per-recipient fields",
                ));
            }
            recipients
        }
        ReportKind::Complaint => {
            let report = blocks.first().cloned().unwrap_or_default();
            return_paths.extend(values(&report, "Original-Mail-From").map(strip_address));
            complaint_recipients(&report, &returned)?
        }
    };
    Ok(Report {
        kind,
        message_id: returned.message_id,
        return_paths,
        recipients,
        digest: hex::encode(Sha256::digest(raw)),
    })
}

/// What the returned message (or its headers) tells.
#[derive(Debug, Default)]
struct Returned {
    message_id: Option<String>,
    return_path: Option<String>,
    to: Vec<String>,
}

impl Returned {
    fn of(message: &Message<'_>) -> Returned {
        Returned {
            message_id: message.message_id().map(str::to_owned),
            return_path: message.return_address().map(str::to_owned),
            to: header_addresses(message, "To"),
        }
    }
}

/// The addresses in every header of that name.
fn header_addresses(message: &Message<'_>, name: &str) -> Vec<String> {
    message
        .header_values(name)
        .filter_map(|value| value.as_address())
        .flat_map(|address| address.iter())
        .filter_map(|addr| addr.address().map(str::to_owned))
        .chain(
            // Delivered-To and X-Original-To are not address fields to the parser.
            message
                .header_values(name)
                .filter_map(|value| value.as_text())
                .map(strip_address),
        )
        .collect()
}

/// One block of header-style fields (`Name: value`), as (lowercase name, unfolded value)
/// pairs; a report's fields part is blocks of them apart by blank lines.
type Block = Vec<(String, String)>;

fn field_blocks(raw: &[u8]) -> Vec<Block> {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .filter_map(|block| {
            let block = format!("{}\n\n", block.trim_start_matches('\n'));
            let parsed = MessageParser::default().parse_headers(block.as_bytes())?;
            let fields: Block = parsed
                .headers_raw()
                .map(|(name, value)| (name.to_ascii_lowercase(), unfold(value)))
                .collect();
            (!fields.is_empty()).then_some(fields)
        })
        .collect()
}

fn unfold(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn values<'a>(block: &'a Block, name: &'a str) -> impl Iterator<Item = &'a str> {
    block
        .iter()
        .filter(move |(field, _)| field.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

fn value<'a>(block: &'a Block, name: &'a str) -> Option<&'a str> {
    values(block, name).next().filter(|v| !v.is_empty())
}

/// `rfc822; jo@x.example` (a typed address, RFC 3464 §2.3.2) or `<jo@x.example>`.
fn strip_address(raw: &str) -> String {
    let address = raw.split_once(';').map_or(raw, |(_, address)| address);
    address
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_owned()
}

/// The recipients a DSN reports as failed or delayed; those delivered, relayed or
/// expanded need nothing done.
fn delivery_recipients(blocks: &[Block]) -> Vec<ReportedRecipient> {
    let mut recipients: Vec<ReportedRecipient> = Vec::new();
    for block in blocks {
        // The address as mailroom sent it; the final one may be a forward of it.
        let Some(raw) = value(block, "Original-Recipient").or(value(block, "Final-Recipient"))
        else {
            continue;
        };
        let Ok(address) = Address::parse(&strip_address(raw)) else {
            continue;
        };
        let status = value(block, "Status")
            .map(|s| s.split_whitespace().next().unwrap_or_default().to_owned());
        let class = status.as_deref().and_then(|s| s.chars().next());
        let verdict = match value(block, "Action")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("failed") => Verdict::Failed,
            Some("delayed") => Verdict::Delayed,
            Some(_) => continue,
            None => match class {
                Some('5') => Verdict::Failed,
                Some('4') => Verdict::Delayed,
                _ => continue,
            },
        };
        if recipients.iter().any(|r| r.address == address) {
            continue;
        }
        recipients.push(ReportedRecipient {
            address,
            verdict,
            status,
            diagnostic: value(block, "Diagnostic-Code").map(|d| strip_type(d).to_owned()),
        });
    }
    recipients
}

/// `smtp; 550 5.1.1 unknown` → `550 5.1.1 unknown`.
fn strip_type(raw: &str) -> &str {
    match raw.split_once(';') {
        Some((kind, rest)) if !kind.contains(' ') => rest.trim(),
        _ => raw,
    }
}

/// Who complained: the report's `Original-Rcpt-To`, else the returned message's To.
/// `Feedback-Type: not-spam` is no complaint.
fn complaint_recipients(
    report: &Block,
    returned: &Returned,
) -> Result<Vec<ReportedRecipient>, NotAReport> {
    let feedback_type = value(report, "Feedback-Type")
        .ok_or_else(|| not_a_report("the feedback report has no Feedback-Type"))?
        .to_ascii_lowercase();
    if feedback_type == "not-spam" {
        return Ok(Vec::new());
    }
    let named: Vec<String> = values(report, "Original-Rcpt-To")
        .map(strip_address)
        .collect();
    let candidates = if named.is_empty() {
        returned.to.clone()
    } else {
        named
    };
    let mut recipients: Vec<ReportedRecipient> = Vec::new();
    for raw in candidates {
        let Ok(address) = Address::parse(&raw) else {
            continue;
        };
        if recipients.iter().any(|r| r.address == address) {
            continue;
        }
        recipients.push(ReportedRecipient {
            address,
            verdict: Verdict::Complaint,
            status: Some(feedback_type.clone()),
            diagnostic: None,
        });
    }
    Ok(recipients)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSN: &str = "From: MAILER-DAEMON@mx.example\r\n\
To: bounces+0193a1b2-0000-7000-8000-000000000001@bounce.acme.example\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain\r\n\
\r\n\
Your message could not be delivered.\r\n\
--b1\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.example\r\n\
\r\n\
Final-Recipient: rfc822; nobody@x.example\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Diagnostic-Code: smtp; 550 5.1.1 <nobody@x.example>:\r\n\
\x20user unknown (a folded line)\r\n\
\r\n\
Final-Recipient: rfc822; <slow@x.example>\r\n\
Action: delayed\r\n\
Status: 4.4.1\r\n\
\r\n\
Final-Recipient: rfc822; fine@x.example\r\n\
Action: delivered\r\n\
Status: 2.0.0\r\n\
--b1\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
From: billing@acme.example\r\n\
To: nobody@x.example\r\n\
Message-ID: <0193a1b2-0000-7000-8000-000000000001@acme.example>\r\n\
Subject: Invoice\r\n\
--b1--\r\n";

    #[test]
    fn a_dsn_gives_its_failed_and_delayed_recipients_and_the_message_id() {
        let report = parse(DSN.as_bytes()).unwrap();
        assert_eq!(report.kind, ReportKind::DeliveryStatus);
        assert_eq!(
            report.message_id.as_deref(),
            Some("0193a1b2-0000-7000-8000-000000000001@acme.example")
        );
        assert!(report.return_paths.contains(
            &"bounces+0193a1b2-0000-7000-8000-000000000001@bounce.acme.example".to_owned()
        ));
        let seen: Vec<(&str, Verdict, Option<&str>)> = report
            .recipients
            .iter()
            .map(|r| (r.address.as_str(), r.verdict, r.status.as_deref()))
            .collect();
        assert_eq!(
            seen,
            [
                ("nobody@x.example", Verdict::Failed, Some("5.1.1")),
                ("slow@x.example", Verdict::Delayed, Some("4.4.1")),
            ]
        );
        assert_eq!(
            report.recipients[0].diagnostic.as_deref(),
            Some("550 5.1.1 <nobody@x.example>: user unknown (a folded line)")
        );
        assert_eq!(report.digest.len(), 64);
    }

    #[test]
    fn garbage_and_other_messages_are_not_reports() {
        for raw in [
            &b""[..],
            b"\xff\xfe not mail at all",
            b"From: a@x.example\r\nSubject: hi\r\n\r\nhello",
            b"Content-Type: multipart/report; report-type=disposition-notification; boundary=x\r\n\r\n--x--\r\n",
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--\r\n",
        ] {
            assert!(parse(raw).is_err(), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn a_complaint_names_its_recipient_or_falls_back_to_the_returned_to() {
        let arf = |fields: &str| {
            format!(
                "From: fbl@isp.example\r\nTo: abuse@acme.example\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report; boundary=\"f\"\r\n\r\n\
--f\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n\
--f\r\nContent-Type: message/feedback-report\r\n\r\n{fields}\r\n\
--f\r\nContent-Type: message/rfc822\r\n\r\n\
From: news@acme.example\r\nTo: Jo <jo@x.example>\r\nMessage-ID: <m1@acme.example>\r\nSubject: News\r\n\r\nHello\r\n\
--f--\r\n"
            )
        };
        let named = parse(
            arf("Feedback-Type: abuse\r\nUser-Agent: ISP/1.0\r\nVersion: 1\r\nOriginal-Rcpt-To: <other@x.example>")
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(named.kind, ReportKind::Complaint);
        assert_eq!(named.message_id.as_deref(), Some("m1@acme.example"));
        assert_eq!(named.recipients.len(), 1);
        assert_eq!(named.recipients[0].address.as_str(), "other@x.example");
        assert_eq!(named.recipients[0].status.as_deref(), Some("abuse"));

        let unnamed = parse(arf("Feedback-Type: abuse\r\nVersion: 1").as_bytes()).unwrap();
        assert_eq!(unnamed.recipients[0].address.as_str(), "jo@x.example");

        let not_spam = parse(arf("Feedback-Type: not-spam\r\nVersion: 1").as_bytes()).unwrap();
        assert!(not_spam.recipients.is_empty());

        assert!(
            parse(arf("Version: 1").as_bytes()).is_err(),
            "no Feedback-Type"
        );
    }
}
