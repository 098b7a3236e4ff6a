//! The suppression list (add, read, remove, list) and the reports that feed it: a
//! bounce or a complaint about an email moves the email on and suppresses the recipient.

use crate::{
    domain::{
        Cursor, Email, EmailId, EmailStatus, Field, MAX_NOTE_CHARS, NewSuppression, Report,
        ReportKind, SuppressedAddress, Suppression, SuppressionReason, Verdict, Violation,
        Violations, email_of_message_id,
    },
    error::{Error, Result},
    ports::{ReportRecorded, ReportToRecord, ReportedRow, StatusChange},
};

use super::Mailroom;

/// What adding an entry by hand found.
#[derive(Debug, Clone)]
pub enum SuppressionAdded {
    Created(Suppression),
    /// The address was on the list already; its entry is unchanged.
    Existing(Suppression),
}

/// What a report amounted to.
#[derive(Debug, Clone)]
pub enum ReportOutcome {
    /// It is about none of our emails (or one that is gone).
    Unmatched,
    Matched {
        /// The email as it is now.
        email: Box<Email>,
        /// The addresses it put on the suppression list (or found there).
        suppressed: Vec<SuppressedAddress>,
        /// The same report was received before; nothing changed.
        duplicate: bool,
    },
}

fn missing(address: &SuppressedAddress) -> Error {
    Error::Missing {
        kind: "suppression",
        id: address.to_string(),
    }
}

impl Mailroom {
    /// Puts an address on the list by hand (`reason: manual`).
    #[tracing::instrument(name = "usecase.suppressions.add", skip_all)]
    pub async fn add_suppression(
        &self,
        address: &str,
        note: Option<String>,
    ) -> Result<SuppressionAdded> {
        let mut violations: Vec<Violation> = Vec::new();
        let address = SuppressedAddress::parse(address, Field::Address)
            .map_err(|v| violations.extend(v))
            .ok();
        let note = note.filter(|note| !note.trim().is_empty());
        if let Some(note) = &note {
            if note.chars().count() > MAX_NOTE_CHARS {
                violations.push(Violation::new(
                    Field::Note,
                    "length",
                    format!("must be at most {MAX_NOTE_CHARS} characters"),
                ));
            }
            if note.contains('\0') {
                violations.push(Violation::new(
                    Field::Note,
                    "control",
                    "must not contain NUL characters",
                ));
            }
        }
        Violations::check(violations)?;
        let address = address.expect("a valid address when there is no violation");
        let (entry, created) = self
            .ports
            .suppressions
            .add(&NewSuppression {
                address,
                reason: SuppressionReason::Manual,
                email_id: None,
                smtp_text: None,
                note,
            })
            .await?;
        if !created {
            return Ok(SuppressionAdded::Existing(entry));
        }
        self.metrics
            .suppressions_added
            .with_label_values(&[SuppressionReason::Manual.as_str()])
            .inc();
        Ok(SuppressionAdded::Created(entry))
    }

    pub async fn suppression(&self, address: &str) -> Result<Suppression> {
        let address = SuppressedAddress::parse(address, Field::Address)?;
        self.ports
            .suppressions
            .get(&address)
            .await?
            .ok_or_else(|| missing(&address))
    }

    /// Takes an address off the list: it is mailed again from now on.
    #[tracing::instrument(name = "usecase.suppressions.delete", skip_all)]
    pub async fn delete_suppression(&self, address: &str) -> Result<()> {
        let address = SuppressedAddress::parse(address, Field::Address)?;
        if self.ports.suppressions.delete(&address).await? {
            Ok(())
        } else {
            Err(missing(&address))
        }
    }

    /// Entries newest first, of one reason (as the caller wrote it) or all.
    pub async fn suppressions(
        &self,
        reason: Option<&str>,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<(Vec<Suppression>, Option<Cursor>)> {
        let reason = reason
            .map(|raw| SuppressionReason::parse(raw.trim(), Field::Reason))
            .transpose()?;
        self.ports.suppressions.list(reason, cursor, limit).await
    }

    /// Acts on a report about sent mail: finds its email (by the Message-ID of the
    /// returned headers, or by a VERP return path), records what it says of each
    /// recipient, moves the email to `bounced` or `complained`, and suppresses the
    /// recipients that failed or complained, in one transaction.
    #[tracing::instrument(name = "usecase.reports.ingest", skip_all, fields(email.id))]
    pub async fn ingest_report(&self, report: &Report) -> Result<ReportOutcome> {
        let Some(email) = self.email_of_report(report).await? else {
            self.count_report("unmatched");
            return Ok(ReportOutcome::Unmatched);
        };
        tracing::Span::current().record("email.id", tracing::field::display(email.id));
        let plan = plan(report, &email);
        let suppressed: Vec<SuppressedAddress> =
            plan.suppress.iter().map(|s| s.address.clone()).collect();
        let recorded = self.ports.suppressions.record_report(&plan).await?;
        let (email, changed, duplicate) = match recorded {
            ReportRecorded::Missing => {
                self.count_report("unmatched");
                return Ok(ReportOutcome::Unmatched);
            }
            ReportRecorded::Duplicate(email) => (email, false, true),
            ReportRecorded::Recorded { email, changed } => (email, changed, false),
        };
        if !duplicate {
            self.count_report(report_kind(&plan));
            for entry in &plan.suppress {
                self.metrics
                    .suppressions_added
                    .with_label_values(&[entry.reason.as_str()])
                    .inc();
            }
        }
        if changed {
            let error = plan
                .status_change
                .as_ref()
                .map(|change| change.error.as_str());
            self.status_changed(&email, error).await;
        }
        Ok(ReportOutcome::Matched {
            email: Box::new(email),
            suppressed,
            duplicate,
        })
    }

    fn count_report(&self, kind: &str) {
        self.metrics.reports.with_label_values(&[kind]).inc();
    }

    /// The email a report is about: the one whose Message-ID its returned headers carry,
    /// else the one its VERP return path names.
    async fn email_of_report(&self, report: &Report) -> Result<Option<Email>> {
        if let Some(message_id) = &report.message_id
            && let Some(id) = email_of_message_id(message_id)
            && let Some(email) = self.ports.store.get(id).await?
            && same_message_id(&email.message_id, message_id)
        {
            return Ok(Some(email));
        }
        let Some(path) = &self.return_path else {
            return Ok(None);
        };
        let ids: Vec<EmailId> = report
            .return_paths
            .iter()
            .filter_map(|address| path.email_of(address))
            .collect();
        for id in ids {
            if let Some(email) = self.ports.store.get(id).await? {
                return Ok(Some(email));
            }
        }
        Ok(None)
    }
}

/// Message-IDs compare without their angle brackets.
fn same_message_id(stored: &str, reported: &str) -> bool {
    let bare = |id: &str| id.trim().trim_matches(['<', '>']).to_owned();
    bare(stored) == bare(reported)
}

/// The kind `mailroom_reports_total` counts a recorded report as.
fn report_kind(plan: &ReportToRecord) -> &'static str {
    let has = |verdict: Verdict| plan.recipients.iter().any(|r| r.verdict == verdict);
    if has(Verdict::Complaint) {
        "complaint"
    } else if has(Verdict::Failed) {
        "bounce"
    } else if has(Verdict::Delayed) {
        "delay"
    } else {
        "other"
    }
}

/// What a report does to its email. A failed recipient makes a `sent` email `bounced`; a
/// complaint makes a `sent` or `bounced` one `complained`; a delay only records. Failed
/// and complaining recipients are suppressed. A complaint that names nobody is taken to
/// be from the email's only recipient, when it has only one.
fn plan(report: &Report, email: &Email) -> ReportToRecord {
    let mut recipients: Vec<ReportedRow> = report
        .recipients
        .iter()
        .map(|r| ReportedRow {
            recipient: SuppressedAddress::of(&r.address).to_string(),
            verdict: r.verdict,
            status: r.status.clone(),
            diagnostic: r.diagnostic.clone(),
        })
        .collect();
    let only_recipient: Vec<_> = email.recipients().collect();
    if report.kind == ReportKind::Complaint
        && recipients.is_empty()
        && let [only] = only_recipient.as_slice()
    {
        recipients.push(ReportedRow {
            recipient: SuppressedAddress::of(&only.address).to_string(),
            verdict: Verdict::Complaint,
            status: None,
            diagnostic: None,
        });
    }
    let suppress: Vec<NewSuppression> = recipients
        .iter()
        .filter_map(|r| {
            let reason = match r.verdict {
                Verdict::Failed => SuppressionReason::HardBounce,
                Verdict::Complaint => SuppressionReason::Complaint,
                Verdict::Delayed => return None,
            };
            Some(NewSuppression {
                // Made canonical above.
                address: SuppressedAddress::from_stored(r.recipient.clone()),
                reason,
                email_id: Some(email.id),
                smtp_text: Some(said(r).unwrap_or(r.verdict.as_str()).to_owned()),
                note: None,
            })
        })
        .collect();
    let describe = |verdict: Verdict| {
        recipients
            .iter()
            .filter(|r| r.verdict == verdict)
            .map(|r| match said(r) {
                Some(text) => format!("{}: {text}", r.recipient),
                None => r.recipient.clone(),
            })
            .collect::<Vec<_>>()
    };
    // Only a feedback report has complaints; a not-spam one names nobody, so it changes
    // nothing.
    let complaints = describe(Verdict::Complaint);
    let failures = describe(Verdict::Failed);
    let status_change = if !complaints.is_empty() {
        Some(StatusChange {
            from: vec![EmailStatus::Sent, EmailStatus::Bounced],
            to: EmailStatus::Complained,
            error: format!("complaint from {}", complaints.join("; ")),
        })
    } else if !failures.is_empty() {
        Some(StatusChange {
            from: vec![EmailStatus::Sent],
            to: EmailStatus::Bounced,
            error: format!("bounced: {}", failures.join("; ")),
        })
    } else {
        None
    };
    ReportToRecord {
        email_id: email.id,
        digest: report.digest.clone(),
        recipients,
        status_change,
        suppress,
    }
}

/// What a report says of a recipient: the remote server's diagnostic, else the status.
fn said(row: &ReportedRow) -> Option<&str> {
    row.diagnostic.as_deref().or(row.status.as_deref())
}
