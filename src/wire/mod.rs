//! The JSON wire format that the REST API and NATS create events share: field names as
//! in the original service (camelCase), and the `mail:create` event. The domain names its
//! fields with [`Field`]; this is where they get their JSON spelling.

mod create_email;
mod create_event;
#[cfg(test)]
mod properties;

pub use create_email::{Addresses, AttachmentInput, CreateEmail, Pairs};
pub use create_event::CreateEvent;

use crate::domain::{Field, FieldPath, Violations};

/// The NATS header of a `mail:create` event naming the client (API key) whose
/// idempotency key the event carries; the REST API's asynchronous path sets it. Events
/// without it belong to no client ('').
pub const CLIENT_HEADER: &str = "Mailroom-Client";

/// A field's name in REST bodies, query strings and NATS events.
pub fn json_name(field: Field) -> &'static str {
    match field {
        Field::EmailId => "emailID",
        Field::From => "from",
        Field::To => "to",
        Field::Cc => "cc",
        Field::Bcc => "bcc",
        Field::ReplyTo => "replyTo",
        Field::Subject => "subject",
        Field::Message => "message",
        Field::Html => "html",
        Field::Attachments => "attachments",
        Field::Filename => "filename",
        Field::Content => "content",
        Field::ContentType => "contentType",
        Field::ContentId => "contentId",
        Field::Headers => "headers",
        Field::Tags => "tags",
        Field::ScheduledAt => "scheduledAt",
        Field::Lane => "lane",
        Field::Emails => "emails",
        Field::Status => "status",
        Field::Tag => "tag",
        Field::CreatedAfter => "createdAfter",
        Field::CreatedBefore => "createdBefore",
        Field::Limit => "limit",
        Field::Url => "url",
        Field::Events => "events",
        Field::Description => "description",
        Field::Cursor => "cursor",
        Field::IdempotencyKey => "idempotencyKey",
        Field::Search => "search",
        Field::Page => "page",
        Field::Size => "size",
        Field::Template => "template",
        Field::TemplateName => "template.name",
        Field::TemplateId => "template.id",
        Field::TemplateVersion => "template.version",
        Field::TemplateVariables => "template.variables",
        Field::Name => "name",
        Field::Version => "version",
        Field::Address => "address",
        Field::Reason => "reason",
        Field::Note => "note",
        Field::Body => "body",
    }
}

/// A path as JSON callers write it: `cc[2]`, `attachments[0].content`.
pub fn json_path(path: &FieldPath) -> String {
    path.render(json_name)
}

/// Every violation as `path: message`, with JSON names.
pub fn describe(violations: &Violations) -> String {
    violations.describe(json_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Violation;

    #[test]
    fn fields_keep_the_names_of_the_original_service() {
        assert_eq!(json_name(Field::EmailId), "emailID");
        assert_eq!(json_name(Field::IdempotencyKey), "idempotencyKey");
        let violations = Violations::one(Violation::new(Field::To, "address", "is bad"));
        assert_eq!(describe(&violations), "to: is bad");
    }
}
