//! Stored templates: saving them (each save a new version), reading, listing, deleting,
//! previewing, and rendering the one a new email names.

use uuid::Uuid;

use crate::{
    domain::{
        Cursor, EmailDraft, Field, Rejected, Template, TemplateContent, TemplateKey, TemplateRef,
        TemplateUse, Violation, Violations, check_template_name,
    },
    error::{Error, Result},
    ports::TemplateSaved,
};

use super::Mailroom;

/// What a caller saves: a template's name and parts, unchecked.
#[derive(Debug, Clone, Default)]
pub struct TemplateDraft {
    pub name: Option<String>,
    pub subject: Option<String>,
    pub message: Option<String>,
    pub html: Option<String>,
}

impl Mailroom {
    /// Saves a new template as version 1. A name already taken is a conflict.
    #[tracing::instrument(name = "usecase.templates.create", skip_all)]
    pub async fn create_template(&self, draft: TemplateDraft) -> Result<Template> {
        let (name, content) = checked(draft)?;
        match self
            .ports
            .templates
            .create(Uuid::now_v7(), &name, &content)
            .await?
        {
            TemplateSaved::Saved(template) => Ok(template),
            TemplateSaved::NameTaken => Err(name_taken(&name)),
            TemplateSaved::Missing => Err(Error::Internal(anyhow::anyhow!(
                "the template {name} just saved is not there"
            ))),
        }
    }

    /// Saves the next version of a template; the versions before stay readable. The
    /// draft's name, when given, must be the template's.
    #[tracing::instrument(name = "usecase.templates.update", skip_all, fields(template = %key))]
    pub async fn update_template(
        &self,
        key: &TemplateKey,
        draft: TemplateDraft,
    ) -> Result<Template> {
        let current = self.template(key, None).await?;
        let draft = TemplateDraft {
            name: Some(draft.name.unwrap_or_else(|| current.name.clone())),
            ..draft
        };
        let (name, content) = checked(draft)?;
        if name != current.name {
            return Err(Violations::one(Violation::new(
                Field::Name,
                "rename",
                format!(
                    "is {name:?}, but the template is {:?}: a template keeps its name \
                     (create another one to use a new name)",
                    current.name
                ),
            ))
            .into());
        }
        match self
            .ports
            .templates
            .add_version(&TemplateKey::Id(current.id), &content)
            .await?
        {
            TemplateSaved::Saved(template) => Ok(template),
            // Deleted in between.
            TemplateSaved::Missing | TemplateSaved::NameTaken => Err(missing(key)),
        }
    }

    /// A template's version, the newest when `version` is `None`.
    pub async fn template(&self, key: &TemplateKey, version: Option<i32>) -> Result<Template> {
        self.ports
            .templates
            .get(key, version)
            .await?
            .ok_or_else(|| match version {
                Some(version) => Error::Missing {
                    kind: "template version",
                    id: format!("{key} version {version}"),
                },
                None => missing(key),
            })
    }

    /// The templates (their newest versions), newest first, and where the next page starts.
    pub async fn templates(
        &self,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<(Vec<Template>, Option<Cursor>)> {
        self.ports.templates.list(cursor, limit).await
    }

    /// Deletes a template and its versions; emails made from it keep their content.
    #[tracing::instrument(name = "usecase.templates.delete", skip_all, fields(template = %key))]
    pub async fn delete_template(&self, key: &TemplateKey) -> Result<()> {
        if self.ports.templates.delete(key).await? {
            Ok(())
        } else {
            Err(missing(key))
        }
    }

    /// A template's newest version rendered with `variables`, stored nowhere.
    pub async fn preview_template(
        &self,
        key: &TemplateKey,
        version: Option<i32>,
        variables: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<TemplateContent> {
        let template = self.template(key, version).await?;
        Ok(template.content.render(variables)?)
    }

    /// Renders the template a draft names into its subject, message and html, and
    /// records which version it was. A draft without a template comes back as it is.
    /// The rendered parts then go through the rules of every email.
    pub async fn render_template(&self, draft: EmailDraft) -> Result<EmailDraft> {
        let Some(using) = &draft.template else {
            return Ok(draft);
        };
        let (key, version) = template_key(&draft, using)?;
        let template = match self.ports.templates.get(&key, version).await? {
            Some(template) => template,
            None => {
                let (field, what) = match (&key, version) {
                    (_, Some(version)) => (
                        Field::TemplateVersion,
                        format!("{key} has no version {version}"),
                    ),
                    (TemplateKey::Id(_), None) => {
                        (Field::TemplateId, format!("no template has the id {key}"))
                    }
                    (TemplateKey::Name(_), None) => {
                        (Field::TemplateName, format!("no template is named {key:?}"))
                    }
                };
                return Err(
                    Violations::one(Violation::new(field, "unknown_template", what)).into(),
                );
            }
        };
        let rendered = template.content.render(&using.variables)?;
        Ok(EmailDraft {
            subject: Some(rendered.subject),
            message: rendered.message,
            html: rendered.html,
            template: None,
            rendered_from: Some(TemplateRef {
                name: template.name,
                version: template.version,
            }),
            ..draft
        })
    }

    /// [`Mailroom::render_template`], then the rules: the email a draft asks for. The
    /// rules' complaints about a rendered part say that it was rendered.
    pub(super) async fn new_email(&self, draft: EmailDraft) -> Result<crate::domain::NewEmail> {
        if draft.template.is_none() {
            return Ok(self.rules.new_email(draft)?);
        }
        let rendered = self.render_template(draft).await?;
        self.rules
            .new_email(rendered)
            .map_err(|rejected| match rejected {
                Rejected::Invalid(violations) => Error::Validation(as_rendered(violations)),
                too_large => too_large.into(),
            })
    }
}

/// The template a draft names, refusing a draft that also gives the parts it renders.
fn template_key(draft: &EmailDraft, using: &TemplateUse) -> Result<(TemplateKey, Option<i32>)> {
    let mut violations = Vec::new();
    for (field, given) in [
        (Field::Subject, draft.subject.is_some()),
        (Field::Message, draft.message.is_some()),
        (Field::Html, draft.html.is_some()),
    ] {
        if given {
            violations.push(Violation::new(
                field,
                "template_conflict",
                "comes from the template: give a template or subject, message and html, not both",
            ));
        }
    }
    match using.key() {
        Ok(key) if violations.is_empty() => Ok(key),
        Ok(_) => Err(Violations::check(violations).unwrap_err().into()),
        Err(invalid) => {
            violations.extend(invalid.iter().cloned());
            Err(Violations::check(violations).unwrap_err().into())
        }
    }
}

/// Violations of the rendered subject, message or html: the caller wrote none of them,
/// so they say they come from the template (a variable that brought a line break into
/// the subject, say).
fn as_rendered(violations: Violations) -> Violations {
    let list = violations
        .iter()
        .cloned()
        .map(|mut violation| {
            if matches!(
                violation.field(),
                Field::Subject | Field::Message | Field::Html
            ) {
                violation.message =
                    format!("as rendered from the template, {}", violation.message).into();
            }
            violation
        })
        .collect();
    Violations::check(list).unwrap_err()
}

/// A template's name and parts, checked.
fn checked(draft: TemplateDraft) -> Result<(String, TemplateContent)> {
    let mut violations = Vec::new();
    let name = match draft.name {
        None => {
            violations.push(Violation::new(Field::Name, "required", "is required"));
            None
        }
        Some(name) => match check_template_name(&name) {
            Ok(()) => Some(name),
            Err(violation) => {
                violations.push(violation);
                None
            }
        },
    };
    let content = match TemplateContent::check(draft.subject, draft.message, draft.html) {
        Ok(content) => Some(content),
        Err(invalid) => {
            violations.extend(invalid.iter().cloned());
            None
        }
    };
    Violations::check(violations)?;
    Ok((name.expect("checked"), content.expect("checked")))
}

fn name_taken(name: &str) -> Error {
    Error::Conflict(format!("a template named {name:?} exists already"))
}

fn missing(key: &TemplateKey) -> Error {
    Error::Missing {
        kind: "template",
        id: key.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        domain::{AddressList, Rules},
        usecase::memory::{Failure, Harness},
    };

    fn welcome() -> TemplateDraft {
        TemplateDraft {
            name: Some("welcome".into()),
            subject: Some("Hi {{ name }}".into()),
            message: Some("Hello {{ name }}".into()),
            html: Some("<p>{{ name }}</p>".into()),
        }
    }

    fn from_template(name: &str, version: Option<i64>, variables: serde_json::Value) -> EmailDraft {
        EmailDraft {
            from: Some("sender@example.com".into()),
            to: Some(AddressList::Text("alice@example.com".into())),
            template: Some(TemplateUse {
                name: Some(name.into()),
                version,
                variables: variables.as_object().unwrap().clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn codes(err: Error) -> Vec<(Field, String)> {
        let Error::Validation(violations) = err else {
            panic!("not a validation error: {err:?}");
        };
        violations
            .iter()
            .map(|v| (v.field(), v.code.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn an_email_is_stored_rendered_with_the_version_it_came_from() {
        let harness = Harness::new();
        let mailroom = &harness.mailroom;
        mailroom.create_template(welcome()).await.unwrap();
        let created = mailroom
            .create(from_template("welcome", None, json!({"name": "<Al>"})))
            .await
            .unwrap();
        let email = created.email;
        assert_eq!(email.subject, "Hi <Al>");
        assert_eq!(email.text.as_deref(), Some("Hello <Al>"));
        assert_eq!(email.html.as_deref(), Some("<p>&lt;Al&gt;</p>"));
        assert_eq!(
            email.template,
            Some(TemplateRef {
                name: "welcome".into(),
                version: 1
            })
        );

        let v2 = mailroom
            .update_template(
                &TemplateKey::Name("welcome".into()),
                TemplateDraft {
                    name: None,
                    subject: Some("Version two".into()),
                    ..welcome()
                },
            )
            .await
            .unwrap();
        assert_eq!((v2.version, v2.latest_version), (2, 2));
        let newest = mailroom
            .create(from_template("welcome", None, json!({"name": "x"})))
            .await
            .unwrap();
        assert_eq!(newest.email.subject, "Version two");
        let pinned = mailroom
            .create(from_template("welcome", Some(1), json!({"name": "x"})))
            .await
            .unwrap();
        assert_eq!(pinned.email.subject, "Hi x");
        let old = mailroom
            .template(&TemplateKey::Name("welcome".into()), Some(1))
            .await
            .unwrap();
        assert_eq!((old.version, old.latest_version), (1, 2));
    }

    #[tokio::test]
    async fn a_template_keeps_its_name_and_names_are_unique() {
        let harness = Harness::new();
        let mailroom = &harness.mailroom;
        mailroom.create_template(welcome()).await.unwrap();
        assert!(matches!(
            mailroom.create_template(welcome()).await,
            Err(Error::Conflict(_))
        ));
        let renamed = TemplateDraft {
            name: Some("other".into()),
            ..welcome()
        };
        let err = mailroom
            .update_template(&TemplateKey::Name("welcome".into()), renamed)
            .await
            .unwrap_err();
        assert_eq!(codes(err), [(Field::Name, "rename".to_owned())]);
        assert!(matches!(
            mailroom
                .update_template(&TemplateKey::Name("nope".into()), welcome())
                .await,
            Err(Error::Missing { .. })
        ));
    }

    #[tokio::test]
    async fn a_template_and_the_parts_it_renders_are_not_given_together() {
        let harness = Harness::new();
        harness.mailroom.create_template(welcome()).await.unwrap();
        let draft = EmailDraft {
            subject: Some("mine".into()),
            html: Some("<p>mine</p>".into()),
            ..from_template("welcome", None, json!({"name": "x"}))
        };
        let err = harness.mailroom.create(draft).await.unwrap_err();
        assert_eq!(
            codes(err),
            [
                (Field::Subject, "template_conflict".to_owned()),
                (Field::Html, "template_conflict".to_owned())
            ]
        );
        let err = harness
            .mailroom
            .create(from_template("welcome", Some(5), json!({"name": "x"})))
            .await
            .unwrap_err();
        assert_eq!(
            codes(err),
            [(Field::TemplateVersion, "unknown_template".to_owned())]
        );
        assert_eq!(harness.store.len(), 0);
    }

    #[tokio::test]
    async fn a_rendered_subject_is_held_to_the_subject_rules() {
        let harness = Harness::new();
        harness.mailroom.create_template(welcome()).await.unwrap();
        let err = harness
            .mailroom
            .create(from_template(
                "welcome",
                None,
                json!({"name": "x\r\nBcc: y@example.com"}),
            ))
            .await
            .unwrap_err();
        let Error::Validation(violations) = err else {
            panic!("{err:?}");
        };
        let violation = violations.iter().next().unwrap();
        assert_eq!(violation.field(), Field::Subject);
        assert!(
            violation
                .message
                .starts_with("as rendered from the template"),
            "{}",
            violation.message
        );
    }

    #[tokio::test]
    async fn a_template_store_outage_is_unavailable_not_invalid() {
        let harness = Harness::new();
        harness.mailroom.create_template(welcome()).await.unwrap();
        harness.templates.fail(Some(Failure::Outage));
        let err = harness
            .mailroom
            .create(from_template("welcome", None, json!({"name": "x"})))
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
    }

    #[test]
    fn the_rules_refuse_a_template_nobody_rendered() {
        let err = Rules::default()
            .new_email(from_template("welcome", None, json!({})))
            .unwrap_err();
        let Rejected::Invalid(violations) = err else {
            panic!("{err:?}");
        };
        assert!(
            violations
                .iter()
                .any(|v| v.field() == Field::Template && v.code == "not_rendered")
        );
    }
}
