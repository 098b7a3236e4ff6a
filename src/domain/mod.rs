//! Domain types: what an email is, how input is validated, what its lifecycle events say.
//! Nothing here knows about HTTP, gRPC, NATS, SQL or SMTP.

mod email;
mod events;
#[cfg(test)]
mod properties;
mod validation;

pub use email::{Email, EmailId, EmailStatus};
pub use events::{CreateEvent, DeadLetter, SendEvent, StatusEvent};
pub use validation::{
    DEFAULT_PAGE_SIZE, EmailDraft, Field, MAX_IDEMPOTENCY_KEY_CHARS, MAX_MESSAGE_BYTES,
    MAX_PAGE_SIZE, NewEmail, SearchPage, SearchQuery, Violation, Violations,
};
