//! Domain types: what an email is, how input is validated, what its lifecycle events say.
//! Nothing here knows about HTTP, gRPC, NATS, SQL or SMTP.

mod address;
mod email;
mod events;
#[cfg(test)]
pub(crate) mod properties;
mod validation;
mod violation;

pub use address::{Address, AddressError, MAX_ADDRESS_CHARS};
pub use email::{Email, EmailId, EmailStatus};
pub use events::{DeadLetter, SendEvent, StatusEvent};
pub use validation::{
    DEFAULT_PAGE_SIZE, EmailDraft, MAX_IDEMPOTENCY_KEY_CHARS, MAX_MESSAGE_BYTES, MAX_PAGE,
    MAX_PAGE_SIZE, MAX_SEARCH_CHARS, NewEmail, SearchPage, SearchQuery,
};
pub use violation::{Field, FieldPath, Segment, Violation, Violations};
