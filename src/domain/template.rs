//! Templates: a subject, a text part and an HTML part written in a Jinja-like language
//! (minijinja), rendered with the caller's variables when an email is created.
//!
//! Rendering is strict and bounded: a variable the caller did not give is an error
//! naming it, the HTML part is auto-escaped (text and subject are not), a template reads
//! nothing but its variables (no loader, so no include, import or extends; no files, no
//! environment), and a render stops with a clear error past a fixed amount of work
//! ([`RENDER_FUEL`]) or of output ([`MAX_MESSAGE_BYTES`] per part).

use std::io::{self, Write};

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Field, FieldPath, MAX_MESSAGE_BYTES, Violation, Violations, validation::body_problem};

/// The longest name.
pub const MAX_TEMPLATE_NAME_CHARS: usize = 64;
/// The work one render may do, in minijinja's fuel (about one unit per instruction):
/// a loop over some thousands of items is fine, one over millions stops.
pub const RENDER_FUEL: u64 = 2_000_000;

/// The template an email was rendered from, stored with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRef {
    pub name: String,
    pub version: i32,
}

/// One version of a stored template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub id: Uuid,
    pub name: String,
    /// This version's number.
    pub version: i32,
    /// The template's newest version.
    pub latest_version: i32,
    pub content: TemplateContent,
    /// When the template was first saved.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When this version was saved.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// How a caller names a template: by id or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateKey {
    Id(Uuid),
    Name(String),
}

impl TemplateKey {
    /// A path segment of `/templates/{idOrName}`: a UUID is an id, anything else a name
    /// (names cannot look like UUIDs, see [`check_name`]).
    pub fn parse(raw: &str) -> Self {
        match Uuid::try_parse(raw) {
            Ok(id) => TemplateKey::Id(id),
            Err(_) => TemplateKey::Name(raw.to_owned()),
        }
    }
}

impl std::fmt::Display for TemplateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateKey::Id(id) => write!(f, "{id}"),
            TemplateKey::Name(name) => write!(f, "{name}"),
        }
    }
}

/// A template to send from, as a create request names it (checked by [`TemplateUse::key`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateUse {
    pub name: Option<String>,
    pub id: Option<String>,
    /// The newest when `None`.
    pub version: Option<i64>,
    pub variables: serde_json::Map<String, serde_json::Value>,
}

impl TemplateUse {
    /// Which template and version it names, or what is wrong with how it names them.
    pub fn key(&self) -> Result<(TemplateKey, Option<i32>), Violations> {
        let key = match (&self.name, &self.id) {
            (Some(_), Some(_)) => Err(Violation::new(
                Field::Template,
                "ambiguous",
                "give the template's name or its id, not both",
            )),
            (None, None) => Err(Violation::new(
                Field::Template,
                "required",
                "must name the template: give its name or its id",
            )),
            (Some(name), None) => Ok(TemplateKey::Name(name.clone())),
            (None, Some(id)) => Uuid::try_parse(id.trim())
                .map(TemplateKey::Id)
                .map_err(|_| Violation::new(Field::TemplateId, "uuid", "must be a UUID")),
        };
        let version = match self.version {
            None => Ok(None),
            Some(n) => i32::try_from(n)
                .ok()
                .filter(|n| *n >= 1)
                .map(Some)
                .ok_or_else(|| {
                    Violation::new(
                        Field::TemplateVersion,
                        "range",
                        "must be a version number, 1 or more",
                    )
                }),
        };
        match (key, version) {
            (Ok(key), Ok(version)) => Ok((key, version)),
            (key, version) => Err(Violations::check(
                [key.err(), version.err()].into_iter().flatten().collect(),
            )
            .unwrap_err()),
        }
    }
}

/// What a template holds: the parts of an email, each a template source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateContent {
    pub subject: String,
    pub message: Option<String>,
    pub html: Option<String>,
}

impl TemplateContent {
    /// Checks what a caller wants to save: a name's form aside, a subject, at least one
    /// of the bodies, each part within the size limit and free of syntax errors (each
    /// named with its line).
    pub fn check(
        subject: Option<String>,
        message: Option<String>,
        html: Option<String>,
    ) -> Result<Self, Violations> {
        let mut violations = Vec::new();
        let subject = match subject {
            Some(subject) if !subject.is_empty() => Some(subject),
            _ => {
                violations.push(Violation::new(
                    Field::Subject,
                    "required",
                    "must not be empty",
                ));
                None
            }
        };
        let message = message.filter(|m| !m.is_empty());
        let html = html.filter(|h| !h.is_empty());
        if message.is_none() && html.is_none() {
            violations.push(Violation::new(
                Field::Message,
                "required",
                "give message, html or both",
            ));
        }
        let env = environment();
        for (field, source) in [
            (Field::Subject, subject.as_deref()),
            (Field::Message, message.as_deref()),
            (Field::Html, html.as_deref()),
        ] {
            let Some(source) = source else { continue };
            // The limits of an email's bodies: at most 1 MiB, no NUL characters.
            if let Some((code, message)) = body_problem(source) {
                violations.push(Violation::new(field, code, message));
            } else if let Err(err) = env.template_from_named_str(part_name(field), source) {
                violations.push(Violation::new(field, "template_syntax", describe(&err)));
            }
        }
        Violations::check(violations)?;
        Ok(TemplateContent {
            subject: subject.unwrap_or_default(),
            message,
            html,
        })
    }

    /// The parts, rendered with `variables`. Errors name the part they come from; a
    /// variable that is missing is reported on `template.variables`.
    pub fn render(
        &self,
        variables: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<TemplateContent, Violations> {
        let env = environment();
        let context = minijinja::Value::from(minijinja::value::Serde(variables));
        let mut violations = Vec::new();
        // A variable missing from several parts is one violation, naming the parts.
        let mut missing: Vec<(String, Vec<&'static str>)> = Vec::new();
        let mut render = |field: Field, source: &str| -> Option<String> {
            let rendered = env
                .template_from_named_str(part_name(field), source)
                .and_then(|template| {
                    let mut out = Bounded::new(MAX_MESSAGE_BYTES);
                    template.render_captured_to(context.clone(), &mut out)?;
                    Ok(out)
                });
            match rendered {
                Ok(out) => match String::from_utf8(out.buffer) {
                    Ok(text) => Some(text),
                    Err(_) => {
                        violations.push(Violation::new(
                            field,
                            "template_render",
                            "renders to invalid UTF-8",
                        ));
                        None
                    }
                },
                Err(err) if err.kind() == ErrorKind::UndefinedError => {
                    let what = err.detail().unwrap_or("a variable is undefined").to_owned();
                    match missing.iter_mut().find(|(seen, _)| *seen == what) {
                        Some((_, parts)) => parts.push(part_name(field)),
                        None => missing.push((what, vec![part_name(field)])),
                    }
                    None
                }
                Err(err) => {
                    violations.push(render_violation(field, &err));
                    None
                }
            }
        };
        let subject = render(Field::Subject, &self.subject);
        let message = self
            .message
            .as_deref()
            .and_then(|m| render(Field::Message, m));
        let html = self.html.as_deref().and_then(|h| render(Field::Html, h));
        violations.extend(missing.into_iter().map(|(what, parts)| {
            Violation::new(
                FieldPath::field(Field::TemplateVariables),
                "template_variable",
                format!(
                    "{what} (in {}): give it in the variables, or use `default` in the template",
                    parts.join(", ")
                ),
            )
        }));
        Violations::check(violations)?;
        Ok(TemplateContent {
            subject: subject.unwrap_or_default(),
            message,
            html,
        })
    }
}

/// Checks a template's name: `[a-z0-9][a-z0-9_-]{0,63}`, and not a UUID (which would
/// read as an id in `/templates/{idOrName}`).
pub fn check_name(name: &str) -> Result<(), Violation> {
    let mut chars = name.chars();
    let well_formed = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name.len() <= MAX_TEMPLATE_NAME_CHARS;
    if !well_formed {
        return Err(Violation::new(
            Field::Name,
            "template_name",
            "must be 1 to 64 of a-z 0-9 _ -, starting with a letter or a digit",
        ));
    }
    if Uuid::try_parse(name).is_ok() {
        return Err(Violation::new(
            Field::Name,
            "template_name",
            "must not be a UUID (it would read as a template id)",
        ));
    }
    Ok(())
}

/// The environment every template is compiled and rendered in: strict about undefined
/// variables, HTML escaped in the HTML part only, bounded work, and no loader.
fn environment<'source>() -> Environment<'source> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Track where undefined values come from, so that a missing variable is named
    // (`user.name` is undefined). minijinja does so by default in debug builds only:
    // the release service said just "undefined value" until this was set.
    env.set_debug(true);
    env.set_fuel(Some(RENDER_FUEL));
    env.set_auto_escape_callback(|name| {
        if name == part_name(Field::Html) {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    // Rendered text keeps its final newline, as written.
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .expect("the default delimiters"),
    );
    env
}

/// The name a part is compiled under; errors cite it, and it chooses the escaping.
fn part_name(field: Field) -> &'static str {
    match field {
        Field::Html => "html",
        Field::Message => "message",
        _ => "subject",
    }
}

/// A minijinja error as a sentence: what, and on which line.
fn describe(err: &minijinja::Error) -> String {
    let kind = err.kind().to_string();
    let what = err.detail().unwrap_or(&kind);
    match err.line() {
        Some(line) => format!("{kind} on line {line}: {what}"),
        None => format!("{kind}: {what}"),
    }
}

fn render_violation(field: Field, err: &minijinja::Error) -> Violation {
    match err.kind() {
        ErrorKind::OutOfFuel => Violation::new(
            field,
            "template_limit",
            "the template does too much work to render (a loop over too many items?)",
        ),
        ErrorKind::WriteFailure => Violation::new(
            field,
            "template_limit",
            format!("renders to more than {MAX_MESSAGE_BYTES} bytes"),
        ),
        _ => Violation::new(field, "template_render", describe(err)),
    }
}

/// An output that refuses to grow past `limit` bytes, so a render cannot fill memory.
struct Bounded {
    buffer: Vec<u8>,
    limit: usize,
}

impl Bounded {
    fn new(limit: usize) -> Self {
        Bounded {
            buffer: Vec::new(),
            limit,
        }
    }
}

impl Write for Bounded {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.buffer.len() + bytes.len() > self.limit {
            return Err(io::Error::other("output limit"));
        }
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn content(subject: &str, message: Option<&str>, html: Option<&str>) -> TemplateContent {
        TemplateContent::check(
            Some(subject.into()),
            message.map(Into::into),
            html.map(Into::into),
        )
        .unwrap()
    }

    fn vars(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        value.as_object().unwrap().clone()
    }

    fn only(violations: Violations) -> Violation {
        let all: Vec<Violation> = violations.iter().cloned().collect();
        assert_eq!(all.len(), 1, "{all:?}");
        all.into_iter().next().unwrap()
    }

    #[test]
    fn html_is_escaped_and_text_and_subject_are_not() {
        let template = content(
            "Hi {{ name }}",
            Some("Dear {{ name }},\n"),
            Some("<p>Dear {{ name }}</p>"),
        );
        let rendered = template
            .render(&vars(json!({"name": "<Tom & \"Jerry\">"})))
            .unwrap();
        assert_eq!(rendered.subject, "Hi <Tom & \"Jerry\">");
        assert_eq!(rendered.message.unwrap(), "Dear <Tom & \"Jerry\">,\n");
        assert_eq!(
            rendered.html.unwrap(),
            "<p>Dear &lt;Tom &amp; &quot;Jerry&quot;&gt;</p>"
        );
    }

    #[test]
    fn conditions_loops_filters_and_nested_variables_render() {
        let template = content(
            "{{ order.id }}",
            Some(
                "{% for item in order.items %}{{ item.name | upper }} x{{ item.qty }}\n{% endfor %}{% if vip %}Thanks!{% endif %}",
            ),
            None,
        );
        let rendered = template
            .render(&vars(json!({
                "order": {"id": 7, "items": [{"name": "tea", "qty": 2}, {"name": "cake", "qty": 1}]},
                "vip": true
            })))
            .unwrap();
        assert_eq!(rendered.subject, "7");
        assert_eq!(rendered.message.unwrap(), "TEA x2\nCAKE x1\nThanks!");
        assert_eq!(rendered.html, None);
    }

    #[test]
    fn a_missing_variable_is_named() {
        let template = content("Hi {{ user.name }}", Some("x"), None);
        let violation = only(template.render(&vars(json!({"user": {}}))).unwrap_err());
        assert_eq!(violation.path, FieldPath::field(Field::TemplateVariables));
        assert_eq!(violation.code, "template_variable");
        assert!(
            violation.message.contains("`user.name`"),
            "{}",
            violation.message
        );
        assert!(
            violation.message.contains("subject"),
            "{}",
            violation.message
        );
        // A variable only read in a branch not taken is not needed.
        let template = content("Hi", Some("{% if vip %}{{ code }}{% endif %}"), None);
        assert!(template.render(&vars(json!({"vip": false}))).is_ok());
    }

    #[test]
    fn a_syntax_error_names_the_field_and_the_line() {
        let err = TemplateContent::check(
            Some("ok".into()),
            None,
            Some("<p>\n{% if x %}\n<b>{{ x }</b>".into()),
        )
        .unwrap_err();
        let violation = only(err);
        assert_eq!(violation.field(), Field::Html);
        assert_eq!(violation.code, "template_syntax");
        assert!(
            violation.message.contains("line 3"),
            "{}",
            violation.message
        );
    }

    #[test]
    fn parts_keep_the_limits_of_an_email_body() {
        let err = TemplateContent::check(
            Some("a\0b".into()),
            Some("x".repeat(MAX_MESSAGE_BYTES + 1)),
            Some("<p>\0</p>".into()),
        )
        .unwrap_err();
        let codes: Vec<(Field, String)> = err
            .iter()
            .map(|v| (v.field(), v.code.to_string()))
            .collect();
        assert_eq!(
            codes,
            [
                (Field::Subject, "nul_character".to_owned()),
                (Field::Message, "too_large".to_owned()),
                (Field::Html, "nul_character".to_owned()),
            ]
        );
    }

    #[test]
    fn a_template_needs_a_subject_and_a_body() {
        let err = TemplateContent::check(None, None, None).unwrap_err();
        let fields: Vec<Field> = err.fields().collect();
        assert_eq!(fields, [Field::Subject, Field::Message]);
    }

    #[test]
    fn a_template_reads_nothing_but_its_variables() {
        for source in [
            "{% include 'other' %}",
            "{% extends 'base' %}",
            "{% import 'macros' as m %}",
        ] {
            let template = content("s", Some(source), None);
            let violation = only(template.render(&vars(json!({}))).unwrap_err());
            assert_eq!(violation.code, "template_render", "{source}");
            assert!(
                violation.message.contains("not found"),
                "{}",
                violation.message
            );
        }
    }

    #[test]
    fn too_much_work_or_output_stops_with_a_clear_error() {
        let endless = content(
            "s",
            Some(
                "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            ),
            None,
        );
        let violation = only(endless.render(&vars(json!({}))).unwrap_err());
        assert_eq!(violation.code, "template_limit");
        assert!(violation.message.contains("work"), "{}", violation.message);

        let huge = content("s", Some("{{ blob }}{{ blob }}"), None);
        let blob = "x".repeat(MAX_MESSAGE_BYTES / 2 + 1);
        let violation = only(huge.render(&vars(json!({"blob": blob}))).unwrap_err());
        assert_eq!(violation.code, "template_limit");
        assert!(violation.message.contains("bytes"), "{}", violation.message);
    }

    #[test]
    fn names_are_lowercase_slugs_and_never_uuids() {
        for good in ["welcome", "0", "order-receipt_v2", &"a".repeat(64)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Welcome",
            "-x",
            "_x",
            "a b",
            "ümlaut",
            &"a".repeat(65),
            "0190f4a2-3b4c-7d5e-8f60-1a2b3c4d5e6f",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_use_names_one_template_and_maybe_a_version() {
        let use_of = |name: Option<&str>, id: Option<&str>, version| TemplateUse {
            name: name.map(Into::into),
            id: id.map(Into::into),
            version,
            variables: Default::default(),
        };
        assert_eq!(
            use_of(Some("welcome"), None, Some(2)).key().unwrap(),
            (TemplateKey::Name("welcome".into()), Some(2))
        );
        let err = use_of(Some("a"), Some("b"), None).key().unwrap_err();
        assert_eq!(only(err).code, "ambiguous");
        let err = use_of(None, None, Some(0)).key().unwrap_err();
        let codes: Vec<_> = err.iter().map(|v| v.code.to_string()).collect();
        assert_eq!(codes, ["required", "range"]);
        let err = use_of(None, Some("nope"), None).key().unwrap_err();
        assert_eq!(only(err).field(), Field::TemplateId);
    }
}
