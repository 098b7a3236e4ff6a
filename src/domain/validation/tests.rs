use super::*;

fn draft() -> EmailDraft {
    EmailDraft {
        from: Some("sender@example.com".into()),
        to: Some(AddressList::Text("alice@example.com".into())),
        subject: Some("Hello".into()),
        message: Some("Hi Alice".into()),
        ..Default::default()
    }
}

fn check(draft: EmailDraft) -> Result<NewEmail, Rejected> {
    Rules::default().new_email(draft)
}

fn accepted(draft: EmailDraft) -> NewEmail {
    check(draft).unwrap()
}

/// Each violation as (path with JSON-like names, code).
fn problems(draft: EmailDraft) -> Vec<(String, String)> {
    match check(draft) {
        Err(Rejected::Invalid(violations)) => violations
            .iter()
            .map(|v| (v.path.render(|f| format!("{f:?}")), v.code.to_string()))
            .collect(),
        other => panic!("expected violations, got {other:?}"),
    }
}

fn one(path: &str, code: &str) -> Vec<(String, String)> {
    vec![(path.to_owned(), code.to_owned())]
}

fn text(list: &str) -> Option<AddressList> {
    Some(AddressList::Text(list.into()))
}

#[test]
fn a_complete_draft_becomes_a_new_email_with_a_message_id_on_the_senders_domain() {
    let email = accepted(draft());
    assert_eq!(email.to[0].address.as_str(), "alice@example.com");
    assert_eq!(email.subject, "Hello");
    assert_eq!(email.message_id, format!("<{}@example.com>", email.id));
}

#[test]
fn every_missing_field_is_reported_at_once() {
    assert_eq!(
        problems(EmailDraft::default()),
        vec![
            ("From".into(), "required".into()),
            ("To".into(), "required".into()),
            ("Subject".into(), "required".into()),
            ("Message".into(), "required".into()),
        ]
    );
}

#[test]
fn display_names_lists_and_arrays_of_addresses_are_taken() {
    let email = accepted(EmailDraft {
        from: Some("Acme Billing <billing@acme.example>".into()),
        to: text(r#"a@x.example, "Doe, Jo" <jo@y.example>"#),
        cc: Some(AddressList::Items(vec!["Zoë <zoe@bücher.example>".into()])),
        reply_to: text("help@acme.example"),
        ..draft()
    });
    assert_eq!(email.from.name.as_deref(), Some("Acme Billing"));
    assert_eq!(email.to.len(), 2);
    assert_eq!(email.to[1].name.as_deref(), Some("Doe, Jo"));
    assert_eq!(email.cc[0].address.ascii(), "zoe@xn--bcher-kva.example");
    assert_eq!(email.reply_to[0].address.as_str(), "help@acme.example");
    assert_eq!(email.message_id, format!("<{}@acme.example>", email.id));
}

#[test]
fn a_bad_item_is_named_by_its_index_in_either_form() {
    assert_eq!(
        problems(EmailDraft {
            cc: text("ok@x.example, not-an-address"),
            ..draft()
        }),
        one("Cc[1]", "address")
    );
    assert_eq!(
        problems(EmailDraft {
            bcc: Some(AddressList::Items(vec![
                "ok@x.example".into(),
                "ok@y.example".into(),
                "a@x.example, b@x.example".into()
            ])),
            ..draft()
        }),
        one("Bcc[2]", "one_address")
    );
    assert_eq!(
        problems(EmailDraft {
            to: text("\"unclosed <a@x.example>"),
            ..draft()
        }),
        one("To", "address")
    );
}

#[test]
fn invalid_senders_are_refused_with_their_reason() {
    for (bad, code) in [
        ("not-an-address", "address"),
        ("a@", "address"),
        ("a b@c.d", "address"),
        ("a@b.c\r\nBcc: x@y.z", "control_characters"),
        ("a@x.example, b@x.example", "one_address"),
    ] {
        assert_eq!(
            problems(EmailDraft {
                from: Some(bad.into()),
                ..draft()
            }),
            one("From", code),
            "{bad:?}"
        );
    }
    let long = format!("{}@example.com", "a".repeat(250));
    assert_eq!(
        problems(EmailDraft {
            from: Some(long),
            ..draft()
        }),
        one("From", "length")
    );
}

#[test]
fn an_empty_recipient_list_is_a_missing_one() {
    for empty in [text(""), text(" , "), Some(AddressList::Items(vec![]))] {
        assert_eq!(
            problems(EmailDraft {
                to: empty,
                ..draft()
            }),
            one("To", "required")
        );
    }
}

#[test]
fn a_recipient_given_twice_is_kept_once_where_it_first_appears() {
    let email = accepted(EmailDraft {
        to: text("a@x.example, A@X.example, b@x.example"),
        cc: text("b@x.example, c@x.example"),
        bcc: text("C@x.example, d@x.example, a@x.example"),
        ..draft()
    });
    let list = |l: &[Mailbox]| l.iter().map(|m| m.address.to_string()).collect::<Vec<_>>();
    assert_eq!(list(&email.to), ["a@x.example", "b@x.example"]);
    assert_eq!(list(&email.cc), ["c@x.example"]);
    assert_eq!(list(&email.bcc), ["d@x.example"]);
}

#[test]
fn recipients_are_bounded_after_repeats_are_dropped() {
    let many = |n: usize| {
        (0..n)
            .map(|i| format!("r{i}@x.example"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rules = Rules {
        limits: Limits {
            max_recipients: 3,
            ..Limits::default()
        },
        ..Rules::default()
    };
    let at_limit = EmailDraft {
        to: text(&many(2)),
        bcc: text("r0@x.example, r9@x.example"),
        ..draft()
    };
    assert!(rules.new_email(at_limit.clone()).is_ok());
    let over = EmailDraft {
        cc: text("r8@x.example"),
        ..at_limit
    };
    let Err(Rejected::Invalid(violations)) = rules.new_email(over) else {
        panic!("four recipients of three");
    };
    assert_eq!(
        violations.iter().next().unwrap().code,
        "too_many_recipients"
    );
}

#[test]
fn an_html_only_email_has_no_text_part_and_one_of_the_two_is_needed() {
    let email = accepted(EmailDraft {
        message: None,
        html: Some("<p>Hi</p>".into()),
        ..draft()
    });
    assert_eq!(
        (email.text, email.html.as_deref()),
        (None, Some("<p>Hi</p>"))
    );
    assert_eq!(
        problems(EmailDraft {
            message: None,
            ..draft()
        }),
        one("Message", "required")
    );
}

#[test]
fn line_breaks_and_control_characters_in_the_subject_are_refused() {
    for (bad, code) in [
        ("Hi\r\nBcc: victim@example.com", "line_break"),
        ("Hi\nthere", "line_break"),
        ("a\u{7}b", "control_characters"),
        ("", "length"),
    ] {
        assert_eq!(
            problems(EmailDraft {
                subject: Some(bad.into()),
                ..draft()
            }),
            one("Subject", code),
            "{bad:?}"
        );
    }
    assert!(
        check(EmailDraft {
            subject: Some("é".repeat(255)),
            ..draft()
        })
        .is_ok()
    );
    assert_eq!(
        problems(EmailDraft {
            subject: Some("é".repeat(256)),
            ..draft()
        }),
        one("Subject", "length")
    );
}

#[test]
fn bodies_are_bounded_to_one_mebibyte_each_and_hold_no_nul() {
    assert!(
        check(EmailDraft {
            message: Some("a".repeat(MAX_MESSAGE_BYTES)),
            ..draft()
        })
        .is_ok()
    );
    assert_eq!(
        problems(EmailDraft {
            message: Some("a".repeat(MAX_MESSAGE_BYTES + 1)),
            ..draft()
        }),
        one("Message", "too_large")
    );
    assert_eq!(
        problems(EmailDraft {
            html: Some("a\0b".into()),
            ..draft()
        }),
        one("Html", "nul_character")
    );
    assert!(
        check(EmailDraft {
            message: Some("a\r\nb\tc".into()),
            ..draft()
        })
        .is_ok()
    );
}

#[test]
fn idempotency_keys_are_bounded_and_header_safe() {
    assert_eq!(
        problems(EmailDraft {
            idempotency_key: Some("k".repeat(256)),
            ..draft()
        }),
        one("IdempotencyKey", "length")
    );
    assert_eq!(
        problems(EmailDraft {
            idempotency_key: Some("a\nb".into()),
            ..draft()
        }),
        one("IdempotencyKey", "line_break")
    );
}

fn attachment(filename: &str, base64: &str) -> AttachmentDraft {
    AttachmentDraft {
        filename: Some(filename.into()),
        content: Some(ContentInput::Base64(base64.into())),
        ..Default::default()
    }
}

#[test]
fn attachments_are_decoded_typed_by_their_name_and_inline_ones_need_html() {
    let email = accepted(EmailDraft {
        html: Some("<img src=\"cid:logo\">".into()),
        attachments: vec![
            attachment("invoice.pdf", "JVBERi0x\nLjQK"),
            AttachmentDraft {
                content_id: Some("<logo>".into()),
                content_type: Some("image/png".into()),
                ..attachment("logo.png", "iVBORw0")
            },
            AttachmentDraft {
                content: Some(ContentInput::Bytes(Bytes::from_static(b"raw"))),
                ..attachment("notes", "")
            },
        ],
        ..draft()
    });
    let metas: Vec<(&str, &str, u64, Option<&str>)> = email
        .attachments
        .iter()
        .map(|a| {
            (
                a.meta.filename.as_str(),
                a.meta.content_type.as_str(),
                a.meta.size,
                a.meta.content_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        metas,
        [
            ("invoice.pdf", "application/pdf", 9, None),
            ("logo.png", "image/png", 5, Some("logo")),
            ("notes", "application/octet-stream", 3, None),
        ]
    );
    assert_eq!(&email.attachments[0].content[..], b"%PDF-1.4\n");
}

#[test]
fn every_bad_attachment_field_is_named_by_its_path() {
    let got = problems(EmailDraft {
        attachments: vec![
            AttachmentDraft::default(),
            attachment("../passwd", "!!!"),
            AttachmentDraft {
                content_type: Some("pdf".into()),
                content_id: Some("logo".into()),
                ..attachment("a.pdf", "")
            },
        ],
        ..draft()
    });
    assert_eq!(
        got,
        vec![
            ("Attachments[0].Filename".into(), "required".into()),
            ("Attachments[0].Content".into(), "required".into()),
            ("Attachments[1].Filename".into(), "path_separator".into()),
            ("Attachments[1].Content".into(), "base64".into()),
            ("Attachments[2].Content".into(), "length".into()),
            ("Attachments[2].ContentType".into(), "content_type".into()),
            (
                "Attachments[2].ContentId".into(),
                "inline_without_html".into()
            ),
        ]
    );
}

#[test]
fn custom_headers_and_tags_follow_their_rules_and_are_named_by_key() {
    let email = accepted(EmailDraft {
        headers: vec![
            ("X-Campaign".into(), "winter".into()),
            ("List-Unsubscribe".into(), "<https://acme.example/u>".into()),
        ],
        tags: vec![("category".into(), "invoice".into())],
        ..draft()
    });
    assert_eq!(email.headers[0].name, "X-Campaign");
    assert_eq!(email.tags["category"], "invoice");

    let got = problems(EmailDraft {
        headers: vec![
            ("Bcc".into(), "x@y.z".into()),
            ("X-Ok".into(), "a\r\nb".into()),
            ("x-ok".into(), "again".into()),
        ],
        tags: vec![
            ("bad name".into(), "v".into()),
            ("t".into(), "a\u{0}".into()),
        ],
        ..draft()
    });
    assert_eq!(
        got,
        vec![
            ("Headers.Bcc".into(), "reserved_header".into()),
            ("Headers.X-Ok".into(), "line_break".into()),
            ("Headers.x-ok".into(), "duplicate".into()),
            ("Tags.bad name".into(), "tag_name".into()),
            ("Tags.t".into(), "control_characters".into()),
        ]
    );
    let too_many_tags: Vec<(String, String)> =
        (0..11).map(|i| (format!("t{i}"), "v".into())).collect();
    assert_eq!(
        problems(EmailDraft {
            tags: too_many_tags,
            ..draft()
        }),
        one("Tags", "too_many")
    );
}

#[test]
fn a_message_over_the_size_limit_is_too_large_and_one_at_it_is_not() {
    let rules = Rules {
        limits: Limits {
            max_message_bytes: 64 * 1024,
            ..Limits::default()
        },
        ..Rules::default()
    };
    let with = |bytes: usize| EmailDraft {
        attachments: vec![AttachmentDraft {
            content: Some(ContentInput::Bytes(Bytes::from(vec![7u8; bytes]))),
            ..attachment("blob.bin", "")
        }],
        ..draft()
    };
    // The largest attachment that fits, found by the rule itself; one byte more does not.
    let fits = (1..64 * 1024)
        .rev()
        .find(|&n| rules.new_email(with(n)).is_ok())
        .unwrap();
    assert!(
        fits > 40 * 1024,
        "{fits}: the bound is not far above the base64 size"
    );
    let Err(Rejected::TooLarge(too_large)) = rules.new_email(with(fits + 1)) else {
        panic!("one byte over the limit");
    };
    assert_eq!(too_large.limit, 64 * 1024);
    assert!(too_large.size > 64 * 1024);
}

#[test]
fn an_ip_literal_sender_takes_the_configured_domain_for_its_message_id() {
    let rules = Rules {
        message_id_domain: "mail.acme.example".into(),
        ..Rules::default()
    };
    let email = rules
        .new_email(EmailDraft {
            from: Some("ops@[10.0.0.1]".into()),
            ..draft()
        })
        .unwrap();
    assert_eq!(
        email.message_id,
        format!("<{}@mail.acme.example>", email.id)
    );
}

#[test]
fn the_lane_is_transactional_unless_bulk_is_asked_for() {
    assert_eq!(accepted(draft()).lane, Lane::Transactional);
    let bulk = EmailDraft {
        lane: Some("bulk".into()),
        ..draft()
    };
    assert_eq!(accepted(bulk).lane, Lane::Bulk);
    for wrong in ["Bulk", "marketing", ""] {
        let draft = EmailDraft {
            lane: Some(wrong.into()),
            ..draft()
        };
        assert_eq!(problems(draft), one("Lane", "lane"), "{wrong:?}");
    }
}
