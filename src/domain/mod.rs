//! Domain types: what an email is, how input is validated, what its lifecycle events say.
//! Nothing here knows about HTTP, gRPC, NATS, SQL or SMTP.

mod address;
mod email;
mod events;
mod lane;
mod listing;
mod mailbox;
mod message;
#[cfg(test)]
pub(crate) mod properties;
mod report;
mod search;
mod suppression;
mod template;
mod validation;
mod violation;
mod webhook;

pub use address::{Address, AddressError, MAX_ADDRESS_CHARS};
pub use email::{Email, EmailId, EmailStatus};
pub use events::{DeadLetter, SendEvent, StatusEvent};
pub use lane::Lane;
pub use listing::{Cursor, DEFAULT_LIST_LIMIT, ListPage, ListParams, ListQuery, MAX_LIST_LIMIT};
pub use mailbox::{Mailbox, MailboxError, format_list, parse_list};
pub use message::{
    Attachment, AttachmentMeta, Header, MAX_ATTACHMENTS, MAX_HEADERS, MAX_TAGS, Tags,
};
pub use report::{
    EMAIL_ID_PLACEHOLDER, Report, ReportKind, ReportedRecipient, ReturnPath, Verdict,
    email_of_message_id,
};
pub use search::{
    DEFAULT_PAGE_SIZE, MAX_PAGE, MAX_PAGE_SIZE, MAX_SEARCH_CHARS, SearchPage, SearchQuery,
};
pub use suppression::{
    MAX_NOTE_CHARS, NewSuppression, SuppressedAddress, Suppression, SuppressionReason,
    enhanced_code, is_hard_bounce,
};
pub use template::{
    MAX_TEMPLATE_NAME_CHARS, RENDER_FUEL, Template, TemplateContent, TemplateKey, TemplateRef,
    TemplateUse, check_name as check_template_name,
};
pub use validation::{
    AddressList, AttachmentDraft, ContentInput, EmailDraft, Limits, MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_MESSAGE_BYTES, NewEmail, Rejected, Rules, TooLarge, delivered_size_bound,
};
pub use violation::{Field, FieldPath, Segment, Violation, Violations};
pub use webhook::{
    ALL_EVENTS, EventData, EventSelection, EventType, SECRET_PREFIX, WebhookEvent, WebhookSecret,
    signature_header,
};
