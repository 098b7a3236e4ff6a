//! [`crate::Error`] as a gRPC status, mapped exhaustively like `rest::problem` maps it to
//! HTTP: a new variant forces a decision here too. Validation errors carry a
//! `google.rpc.BadRequest` naming the proto fields; UNAVAILABLE and INTERNAL say nothing
//! about their cause, which is logged here, once.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::{
    domain::{Field, Violation, Violations},
    error::Error,
};

/// The error domain in `google.rpc.ErrorInfo` details.
const DOMAIN: &str = "mailroom";

/// How long a client should wait before retrying after UNAVAILABLE.
const RETRY_AFTER: Duration = Duration::from_secs(5);

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::Validation(violations) => invalid_argument(&violations),
            Error::NotFound(id) => {
                let mut details = ErrorDetails::new();
                details.set_resource_info("emailService.Email", id.to_string(), "", "");
                Status::with_error_details(
                    Code::NotFound,
                    format!("no email has the id {id}"),
                    details,
                )
            }
            Error::AttachmentNotFound { id, index } => {
                let mut details = ErrorDetails::new();
                details.set_resource_info(
                    "emailService.Attachment",
                    format!("{id}/{index}"),
                    "",
                    "",
                );
                Status::with_error_details(
                    Code::NotFound,
                    format!("email {id} has no attachment {index}"),
                    details,
                )
            }
            Error::TooLate { id, status, action } => {
                let details = ErrorDetails::with_precondition_failure(vec![
                    tonic_types::PreconditionViolation::new(
                        "STATUS",
                        format!("emailService.Email/{id}"),
                        format!("the email is {status}"),
                    ),
                ]);
                Status::with_error_details(
                    Code::FailedPrecondition,
                    format!("email {id} is {status}: too late to {action} it"),
                    details,
                )
            }
            Error::Missing { kind, id } => {
                Status::new(Code::NotFound, format!("no {kind} has the id {id}"))
            }
            Error::Conflict(detail) => Status::new(Code::FailedPrecondition, detail),
            Error::MessageTooLarge(too_large) => {
                let violation = FieldViolation {
                    field: proto_name(Field::Attachments).to_owned(),
                    description: format!(
                        "the message would take at least {} bytes as delivered; limits.max_message_bytes allows {}",
                        too_large.size, too_large.limit
                    ),
                    reason: "MESSAGE_TOO_LARGE".into(),
                    localized_message: None,
                };
                Status::with_error_details(
                    Code::InvalidArgument,
                    violation.description.clone(),
                    ErrorDetails::with_bad_request(vec![violation]),
                )
            }
            Error::IdempotencyConflict { key, existing } => {
                let details = ErrorDetails::with_error_info(
                    "IDEMPOTENCY_KEY_REUSED",
                    DOMAIN,
                    [("existingEmailID".to_owned(), existing.to_string())],
                );
                Status::with_error_details(
                    Code::AlreadyExists,
                    format!(
                        "the idempotency key {key:?} was already used for email {existing} with different content"
                    ),
                    details,
                )
            }
            Error::Unavailable { dependency, source } => {
                tracing::error!(%dependency, error = format!("{source:#}"), "answering UNAVAILABLE: a dependency is down");
                Status::with_error_details(
                    Code::Unavailable,
                    "a dependency is temporarily unavailable; try again shortly",
                    ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
                )
            }
            Error::Internal(source) => {
                tracing::error!(error = format!("{source:#}"), "answering INTERNAL");
                Status::internal("the request could not be completed")
            }
        }
    }
}

/// INVALID_ARGUMENT with one field violation per problem, fields named as in the proto.
pub fn invalid_argument(violations: &Violations) -> Status {
    let message = violations.describe(proto_name);
    let field_violations: Vec<FieldViolation> = violations.iter().map(field_violation).collect();
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request(field_violations),
    )
}

fn field_violation(violation: &Violation) -> FieldViolation {
    FieldViolation {
        field: violation.path.render(proto_name),
        description: violation.message.to_string(),
        // google.rpc wants SCREAMING_SNAKE_CASE reasons: `address` becomes `ADDRESS`.
        reason: violation.code.to_ascii_uppercase(),
        localized_message: None,
    }
}

/// A field's name in `proto/email.proto` (the request as a whole has none).
pub fn proto_name(field: Field) -> &'static str {
    match field {
        Field::EmailId => "EmailID",
        Field::From => "From",
        Field::To => "To",
        Field::Cc => "Cc",
        Field::Bcc => "Bcc",
        Field::ReplyTo => "ReplyTo",
        Field::Subject => "Subject",
        Field::Message => "Message",
        Field::Html => "Html",
        Field::Attachments => "Attachments",
        Field::Filename => "Filename",
        Field::Content => "Content",
        Field::ContentType => "ContentType",
        Field::ContentId => "ContentId",
        Field::Headers => "Headers",
        Field::Tags => "Tags",
        Field::ScheduledAt => "ScheduledAt",
        Field::Lane => "Lane",
        Field::Emails => "Emails",
        Field::Status => "Status",
        Field::Tag => "Tag",
        Field::CreatedAfter => "CreatedAfter",
        Field::CreatedBefore => "CreatedBefore",
        Field::Limit => "Limit",
        Field::Cursor => "Cursor",
        Field::IdempotencyKey => "IdempotencyKey",
        Field::Search => "Search",
        Field::Page => "page",
        Field::Size => "size",
        // Webhooks are managed over REST only; these never reach a gRPC answer.
        Field::Url => "url",
        Field::Events => "events",
        Field::Description => "description",
        // A template is named by TemplateName (a name or an id).
        Field::Template | Field::TemplateName | Field::TemplateId => "TemplateName",
        Field::TemplateVersion => "TemplateVersion",
        Field::TemplateVariables => "TemplateVariables",
        // Templates are managed over REST only.
        Field::Name => "name",
        Field::Version => "version",
        // The suppression list is managed over REST only.
        Field::Address => "address",
        Field::Reason => "reason",
        Field::Note => "note",
        Field::Body => "",
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::EmailId;

    use super::*;

    #[test]
    fn validation_errors_name_the_proto_fields() {
        let violations = Violations::check(vec![
            Violation::new(Field::To, "address", "is not an email address"),
            Violation::new(Field::EmailId, "uuid", "must be a UUID"),
        ])
        .unwrap_err();
        let status = Status::from(Error::Validation(violations));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("To: is not an email address"));
        let bad_request = status.get_details_bad_request().unwrap();
        let fields: Vec<_> = bad_request
            .field_violations
            .iter()
            .map(|v| (v.field.as_str(), v.reason.as_str()))
            .collect();
        assert_eq!(fields, vec![("To", "ADDRESS"), ("EmailID", "UUID")]);
    }

    #[test]
    fn causes_of_server_errors_stay_private() {
        let status = Status::from(Error::Internal(anyhow::anyhow!(
            "connection to 10.0.0.7:5432 refused"
        )));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("5432"));

        let status = Status::from(Error::unavailable(
            crate::error::Dependency::Postgres,
            anyhow::anyhow!("password authentication failed for user postgres"),
        ));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("postgres"));
        assert_eq!(
            status.get_details_retry_info().unwrap().retry_delay,
            Some(RETRY_AFTER)
        );
    }

    #[test]
    fn an_idempotency_conflict_names_the_existing_email() {
        let existing = EmailId::generate();
        let status = Status::from(Error::IdempotencyConflict {
            key: "k1".into(),
            existing,
        });
        assert_eq!(status.code(), Code::AlreadyExists);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "IDEMPOTENCY_KEY_REUSED");
        assert_eq!(info.metadata["existingEmailID"], existing.to_string());
    }
}
