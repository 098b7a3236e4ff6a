//! What is wrong with an input, and where: each [`Violation`] names the field it is
//! about by a [`FieldPath`] (`cc[2]`, `attachments[0].content`, `headers.X-Campaign`).
//! Paths are made of domain [`Field`]s; each protocol spells them its own way (REST and
//! NATS in camelCase, gRPC with the proto's names), so nothing here names a wire field.

use std::{borrow::Cow, fmt};

/// An input field a violation is about.
///
/// The order of the variants is the order violations are reported in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    From,
    To,
    Cc,
    Bcc,
    ReplyTo,
    Subject,
    Message,
    Html,
    Attachments,
    /// Of an attachment.
    Filename,
    /// Of an attachment.
    Content,
    /// Of an attachment.
    ContentType,
    /// Of an attachment.
    ContentId,
    Headers,
    Tags,
    ScheduledAt,
    Lane,
    IdempotencyKey,
    /// The email's id, when the caller chooses it (or asks for one).
    EmailId,
    Search,
    Page,
    Size,
    /// The emails of a batch.
    Emails,
    /// List filters and paging.
    Status,
    Tag,
    CreatedAfter,
    CreatedBefore,
    Limit,
    Cursor,
    /// Of a webhook endpoint.
    Url,
    Events,
    Description,
    /// The template a create names, and its parts.
    Template,
    TemplateName,
    TemplateId,
    TemplateVersion,
    TemplateVariables,
    /// Of a stored template.
    Name,
    /// Of a stored template, in a path.
    Version,
    /// Of a suppression-list entry.
    Address,
    Reason,
    Note,
    /// The request as a whole (malformed JSON, an unknown field).
    Body,
}

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    Field(Field),
    /// An item of a list.
    Index(usize),
    /// An entry of a map, by its key.
    Key(String),
}

/// Where in an input a violation is: a field, then items and entries within it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    pub fn field(field: Field) -> Self {
        FieldPath(vec![Segment::Field(field)])
    }

    /// This path, then item `index` of it.
    pub fn index(mut self, index: usize) -> Self {
        self.0.push(Segment::Index(index));
        self
    }

    /// This path, then the entry `key` of it.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.0.push(Segment::Key(key.into()));
        self
    }

    /// This path, then its sub-field `field`.
    pub fn then(mut self, field: Field) -> Self {
        self.0.push(Segment::Field(field));
        self
    }

    /// `inner` as a part of this path (an item of a batch: `emails[7]` then `to`).
    pub fn join(mut self, inner: &FieldPath) -> Self {
        self.0.extend(inner.0.iter().cloned());
        self
    }

    /// The field the path starts with.
    pub fn first(&self) -> Field {
        match self.0.first() {
            Some(Segment::Field(field)) => *field,
            _ => Field::Body,
        }
    }

    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// The path spelt with `name` for each field: `a.b`, `a[2]`, `a.key`.
    pub fn render<N: fmt::Display>(&self, name: impl Fn(Field) -> N) -> String {
        use fmt::Write;
        let mut out = String::new();
        for segment in &self.0 {
            // Writing to a String cannot fail.
            let _ = match segment {
                Segment::Field(field) if out.is_empty() => write!(out, "{}", name(*field)),
                Segment::Field(field) => write!(out, ".{}", name(*field)),
                Segment::Index(index) => write!(out, "[{index}]"),
                Segment::Key(key) => write!(out, ".{key}"),
            };
        }
        out
    }
}

impl From<Field> for FieldPath {
    fn from(field: Field) -> Self {
        FieldPath::field(field)
    }
}

/// For logs only: protocols render paths with their own field names.
impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(|field| format!("{field:?}")))
    }
}

/// One thing wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: FieldPath,
    /// A stable machine-readable code (`required`, `address`, `length`, …).
    pub code: Cow<'static, str>,
    /// A sentence for people.
    pub message: Cow<'static, str>,
}

impl Violation {
    pub fn new(
        path: impl Into<FieldPath>,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            path: path.into(),
            code: code.into(),
            message: message.into(),
        }
    }

    /// The field the violation's path starts with.
    pub fn field(&self) -> Field {
        self.path.first()
    }
}

/// Everything wrong with an input, never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violations(Vec<Violation>);

impl Violations {
    pub fn one(violation: Violation) -> Self {
        Self(vec![violation])
    }

    pub fn iter(&self) -> impl Iterator<Item = &Violation> {
        self.0.iter()
    }

    /// The field each violation's path starts with, in order.
    pub fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        self.0.iter().map(Violation::field)
    }

    /// `Err` with the violations sorted by path, or `Ok` when there are none.
    pub fn check(mut list: Vec<Violation>) -> Result<(), Self> {
        if list.is_empty() {
            return Ok(());
        }
        // Stable: several problems of one field keep the order they were found in.
        list.sort_by(|a, b| a.path.cmp(&b.path));
        Err(Self(list))
    }

    /// Each violation with its path put under `parent` (`emails[7]`).
    pub fn within(self, parent: &FieldPath) -> Self {
        Self(
            self.0
                .into_iter()
                .map(|v| Violation {
                    path: parent.clone().join(&v.path),
                    ..v
                })
                .collect(),
        )
    }

    /// Every violation, spelt `path: message` with `name` for each field, `; ` apart.
    pub fn describe<N: fmt::Display>(&self, name: impl Fn(Field) -> N + Copy) -> String {
        self.0
            .iter()
            .map(|v| format!("{}: {}", v.path.render(name), v.message))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl IntoIterator for Violations {
    type Item = Violation;
    type IntoIter = std::vec::IntoIter<Violation>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// For logs only; protocols use [`Violations::describe`] with their own names.
impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(|field| format!("{field:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lower(field: Field) -> &'static str {
        match field {
            Field::To => "to",
            Field::Body => "body",
            _ => "other",
        }
    }

    #[test]
    fn paths_render_fields_items_and_keys() {
        let path = FieldPath::field(Field::Body)
            .index(7)
            .then(Field::To)
            .index(2);
        assert_eq!(path.render(lower), "body[7].to[2]");
        assert_eq!(
            FieldPath::field(Field::To).key("X-Campaign").render(lower),
            "to.X-Campaign"
        );
        assert_eq!(path.first(), Field::Body);
    }

    #[test]
    fn violations_are_sorted_by_path_and_keep_their_order_within_one() {
        let err = Violations::check(vec![
            Violation::new(Field::Subject, "b", "second"),
            Violation::new(FieldPath::field(Field::To).index(1), "x", "x"),
            Violation::new(Field::Subject, "a", "third"),
            Violation::new(FieldPath::field(Field::To).index(0), "y", "y"),
            Violation::new(Field::From, "c", "first"),
        ])
        .unwrap_err();
        let order: Vec<&str> = err.iter().map(|v| v.code.as_ref()).collect();
        assert_eq!(order, ["c", "y", "x", "b", "a"]);
    }

    #[test]
    fn a_violation_inside_a_batch_item_is_named_under_the_item() {
        let inner = Violations::one(Violation::new(Field::To, "address", "bad"));
        let outer = inner.within(&FieldPath::field(Field::Body).index(3));
        assert_eq!(outer.describe(lower), "body[3].to: bad");
    }
}
