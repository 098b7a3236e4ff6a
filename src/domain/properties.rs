//! Property tests of the input rules: whatever a caller sends (any draft, any search, any
//! id), nothing panics, and what is accepted is exactly what the rules allow. The rules
//! are restated here independently of `validation.rs`, so a change to either shows up as
//! a failing property. The strategies serve the wire format's properties too.
//!
//! Addresses are checked against lettre's parser: whatever the domain accepts, the SMTP
//! adapter must be able to send.

use std::collections::HashSet;

use lettre::Address;
use proptest::{collection::vec, option, prelude::*};
use uuid::Uuid;

use bytes::Bytes;

use super::{
    AddressList, AttachmentDraft, ContentInput, EmailDraft, EmailId, Field, MAX_MESSAGE_BYTES,
    MAX_PAGE, MAX_PAGE_SIZE, MAX_SEARCH_CHARS, Mailbox, NewEmail, Rejected, Rules, SearchQuery,
    format_list, parse_list,
};

// --- the rules, restated ---------------------------------------------------------------

/// An address lettre takes, whose wire form (the domain in punycode) it takes too.
pub(crate) fn address_ok(raw: &str) -> bool {
    let chars = raw.chars().count();
    let wire_form = || {
        let (local, domain) = raw.rsplit_once('@')?;
        let ascii = idna::domain_to_ascii(domain).ok()?;
        format!("{local}@{ascii}").parse::<Address>().ok()
    };
    (1..=254).contains(&chars)
        && !raw.chars().any(char::is_control)
        && raw.parse::<Address>().is_ok()
        && (raw.is_ascii() || wire_form().is_some())
}

/// A single mailbox without a display name, as the strategies write them (no `<`, `>`
/// or `"`): blanks around it do not count, and neither do empty items of a header-form
/// list (`a@x.example,` is the one mailbox `a@x.example`, as `parse_list` documents).
/// The raw strings of the wire strategies can hold commas.
pub(crate) fn bare_mailbox_ok(raw: &str) -> bool {
    let mut items = raw
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty());
    matches!((items.next(), items.next()), (Some(item), None) if address_ok(item))
}

/// Subjects and idempotency keys end up in mail or NATS headers.
pub(crate) fn header_text_ok(raw: &str, max_chars: usize) -> bool {
    (1..=max_chars).contains(&raw.chars().count()) && !raw.chars().any(char::is_control)
}

pub(crate) fn body_ok(raw: &str) -> bool {
    (1..=MAX_MESSAGE_BYTES).contains(&raw.len()) && !raw.contains('\0')
}

/// Whether names repeat, case aside (headers) or exactly (tags).
fn repeats(names: impl Iterator<Item = String>) -> bool {
    let mut seen = HashSet::new();
    names.into_iter().any(|name| !seen.insert(name))
}

/// The fields a draft breaks a rule in (drafts as `draft()` makes them: one mailbox per
/// list, headers, tags and attachments well formed but for repeated names).
pub(crate) fn broken_fields(draft: &EmailDraft) -> HashSet<Field> {
    let mut broken = HashSet::new();
    let mut check = |field, ok: bool| {
        if !ok {
            broken.insert(field);
        }
    };
    // One bare mailbox, as an item or as a list's text (the strategies write no commas).
    let one = |list: &Option<AddressList>| match list {
        Some(AddressList::Items(items)) => items.len() == 1 && bare_mailbox_ok(&items[0]),
        Some(AddressList::Text(text)) => bare_mailbox_ok(text),
        None => false,
    };
    check(
        Field::From,
        draft.from.as_deref().is_some_and(bare_mailbox_ok),
    );
    check(Field::To, one(&draft.to));
    check(
        Field::Subject,
        draft
            .subject
            .as_deref()
            .is_some_and(|s| header_text_ok(s, 255)),
    );
    check(
        Field::Message,
        match (&draft.message, &draft.html) {
            (None, None) => false,
            (Some(message), _) => body_ok(message),
            (None, Some(_)) => true,
        },
    );
    check(Field::Html, draft.html.as_deref().is_none_or(body_ok));
    check(
        Field::IdempotencyKey,
        draft
            .idempotency_key
            .as_deref()
            .is_none_or(|k| header_text_ok(k, 255)),
    );
    check(
        Field::Headers,
        !repeats(draft.headers.iter().map(|(n, _)| n.to_ascii_lowercase())),
    );
    check(
        Field::Tags,
        !repeats(draft.tags.iter().map(|(n, _)| n.clone())),
    );
    broken
}

/// What every accepted email satisfies, whichever path it came by: each address is one
/// lettre can send, each mailbox's header form reads back as itself.
pub(crate) fn assert_follows_the_rules(email: &NewEmail) {
    let mailboxes = std::iter::once(&email.from)
        .chain(&email.to)
        .chain(&email.cc)
        .chain(&email.bcc)
        .chain(&email.reply_to);
    for mailbox in mailboxes {
        let text = mailbox.address.to_string();
        assert!(address_ok(&text), "accepted address {text:?}");
        assert!(
            mailbox.address.ascii().parse::<Address>().is_ok(),
            "lettre takes the wire form of {text:?}"
        );
        assert_eq!(Mailbox::parse(&mailbox.to_string()).as_ref(), Ok(mailbox));
        assert!(
            mailbox
                .name
                .as_deref()
                .is_none_or(|n| !n.chars().any(char::is_control))
        );
    }
    assert!(!email.to.is_empty());
    assert!(
        header_text_ok(&email.subject, 255),
        "accepted subject {:?}",
        email.subject
    );
    assert!(!email.subject.contains(['\r', '\n']));
    assert!(email.text.is_some() || email.html.is_some(), "a body");
    assert!(
        email.text.as_deref().is_none_or(body_ok),
        "accepted message"
    );
    assert!(email.html.as_deref().is_none_or(body_ok), "accepted html");
    assert!(
        email
            .idempotency_key
            .as_deref()
            .is_none_or(|k| header_text_ok(k, 255)),
        "accepted idempotency key {:?}",
        email.idempotency_key
    );
    for header in &email.headers {
        assert!(!header.value.contains(['\r', '\n']), "{header:?}");
    }
}

/// The rules a deployment runs with by default.
pub(crate) fn rules() -> Rules {
    Rules::default()
}

// --- strategies ------------------------------------------------------------------------

/// Mostly plain letters, often something hostile: line breaks, NUL, other control
/// characters, separators that matter in addresses and headers, and any char at all.
pub(crate) fn hostile_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => proptest::char::range('a', 'z'),
        3 => prop::sample::select(vec![
            '@', '.', ' ', '\r', '\n', '\0', '\t', '\u{7f}', '\u{85}', '\u{9f}', '\u{a0}',
            'é', '\u{2028}', '"', '<', '>', ',', ':', ';', '\\', '😀',
        ]),
        1 => any::<char>(),
    ]
}

pub(crate) fn text(max_chars: usize) -> impl Strategy<Value = String> {
    vec(hostile_char(), 0..=max_chars).prop_map(String::from_iter)
}

/// Text that breaks no rule by itself: printable characters, and in bodies line breaks.
pub(crate) fn clean_text(max_chars: usize, line_breaks: bool) -> impl Strategy<Value = String> {
    let mut chars = vec![
        'a', 'z', 'Q', '0', ' ', '.', '!', 'é', 'ß', '\u{a0}', '😀', '"',
    ];
    if line_breaks {
        chars.extend(['\r', '\n', '\t']);
    }
    vec(prop::sample::select(chars), 1..=max_chars).prop_map(String::from_iter)
}

/// `count` copies of `unit`, where `count` lands around a limit.
pub(crate) fn around(unit: &'static str, limit: usize) -> impl Strategy<Value = String> {
    (limit.saturating_sub(2)..=limit + 2).prop_map(move |count| unit.repeat(count))
}

pub(crate) fn address() -> impl Strategy<Value = String> {
    let local = "[a-z0-9]{1,8}([._%+-][a-z0-9]{1,8}){0,2}";
    let domain = "[a-z0-9]{1,10}(-[a-z0-9]{1,5})?";
    prop_oneof![
        8 => (local, domain, "[a-z]{2,6}")
            .prop_map(|(local, domain, tld)| format!("{local}@{domain}.{tld}")),
        // Around the 254-character limit, in characters, not bytes.
        1 => (250usize..=258, prop::sample::select(vec!['x', 'é']))
            .prop_map(|(chars, c)| long_address(chars, c)),
        // An address with a header, a display name or a second address after it.
        2 => (local, text(12)).prop_map(|(local, tail)| format!("{local}@example.com{tail}")),
        2 => text(30),
    ]
}

/// `cccc…c@xxx…x.com`, `chars` characters long: 20 `c` (`é` makes the address longer in
/// bytes than in characters), then a domain with labels of at most 60 characters.
pub(crate) fn long_address(chars: usize, c: char) -> String {
    let local = c.to_string().repeat(20);
    let domain: String = (0..chars - "@.com".len() - 20)
        .map(|i| if i % 61 == 60 { '.' } else { 'x' })
        .collect();
    format!("{local}@{domain}.com")
}

pub(crate) fn subject() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => clean_text(60, false),
        4 => text(40),
        1 => around("s", 255),
        1 => around("é", 255),
        1 => (text(8), text(8)).prop_map(|(a, b)| format!("{a}\r\nBcc: victim@example.com{b}")),
    ]
}

pub(crate) fn body() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => clean_text(60, true),
        3 => text(60),
        1 => around("m", MAX_MESSAGE_BYTES),
        // Over the limit in bytes while under it in characters.
        1 => Just("é".repeat(MAX_MESSAGE_BYTES / 2 + 1)),
    ]
}

pub(crate) fn idempotency_key() -> impl Strategy<Value = String> {
    prop_oneof![4 => clean_text(30, false), 2 => text(30), 1 => around("k", 255)]
}

/// A mailbox as the rules restated above read it: anything `address()` makes, less the
/// characters of display names and lists.
pub(crate) fn bare_mailbox() -> impl Strategy<Value = String> {
    address().prop_map(|raw| raw.replace(['<', '>', '"', ','], ""))
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    vec(("X-[A-Za-c]{1,3}", clean_text(20, false)), 0..4)
}

fn tags() -> impl Strategy<Value = Vec<(String, String)>> {
    vec(("[a-c]{1,2}", clean_text(20, false)), 0..4)
}

fn attachments() -> impl Strategy<Value = Vec<AttachmentDraft>> {
    vec(
        ("[a-z]{1,8}\\.(pdf|png|txt|bin)", vec(any::<u8>(), 1..64)).prop_map(|(name, bytes)| {
            AttachmentDraft {
                filename: Some(name),
                content: Some(ContentInput::Bytes(Bytes::from(bytes))),
                ..Default::default()
            }
        }),
        0..3,
    )
}

pub(crate) fn draft() -> impl Strategy<Value = EmailDraft> {
    (
        (
            option::weighted(0.9, bare_mailbox()),
            option::weighted(0.9, bare_mailbox()),
            option::weighted(0.9, subject()),
            option::weighted(0.85, body()),
            option::weighted(0.3, body()),
            option::weighted(0.3, idempotency_key()),
        ),
        (headers(), tags(), attachments()),
    )
        .prop_map(
            |(
                (from, to, subject, message, html, idempotency_key),
                (headers, tags, attachments),
            )| {
                EmailDraft {
                    from,
                    to: to.map(|to| AddressList::Items(vec![to])),
                    subject,
                    message,
                    html,
                    idempotency_key,
                    headers,
                    tags,
                    attachments,
                    ..Default::default()
                }
            },
        )
}

/// A display name of anything printable, specials and quotes included.
fn display_name() -> impl Strategy<Value = String> {
    let chars = vec![
        'a', 'Z', ' ', '.', ',', ';', ':', '@', '(', ')', '[', ']', '"', '\\', '<', '>', 'é', 'ß',
        '😀', '\'',
    ];
    vec(prop::sample::select(chars), 1..20).prop_map(String::from_iter)
}

fn good_address() -> impl Strategy<Value = String> {
    (
        "[a-z0-9]{1,8}([._+-][a-z0-9]{1,4})?",
        "[a-z0-9]{1,10}",
        "[a-z]{2,5}",
    )
        .prop_map(|(local, domain, tld)| format!("{local}@{domain}.{tld}"))
}

// --- properties ------------------------------------------------------------------------

proptest! {

    /// Every broken field is reported, at once, and nothing else.
    #[test]
    fn a_draft_is_accepted_exactly_when_it_follows_the_rules(draft in draft()) {
        let broken = broken_fields(&draft);
        match rules().new_email(draft) {
            Ok(email) => {
                prop_assert!(broken.is_empty(), "accepted despite {:?}", broken);
                assert_follows_the_rules(&email);
            }
            Err(Rejected::Invalid(violations)) => {
                prop_assert_eq!(violations.fields().collect::<HashSet<_>>(), broken);
                for violation in violations.iter() {
                    prop_assert!(!violation.code.is_empty() && !violation.message.is_empty());
                }
            }
            Err(Rejected::TooLarge(too_large)) => {
                prop_assert!(false, "no draft of the strategy is that large: {:?}", too_large);
            }
        }
    }

    /// A mailbox with any display name is written so that it reads back as itself, and
    /// so that lettre (an independent RFC 5322 parser) reads the same name and address.
    #[test]
    fn a_mailbox_in_header_form_reads_back_as_itself(
        name in display_name(),
        address in good_address(),
    ) {
        let mailbox = Mailbox::new(
            Some(name.trim().to_owned()),
            super::Address::parse(&address).unwrap(),
        );
        let text = mailbox.to_string();
        let parsed = Mailbox::parse(&text);
        prop_assert_eq!(parsed.as_ref(), Ok(&mailbox), "{}", text);
        if name.is_ascii() {
            // lettre folds runs of blanks in a name into one, as RFC 5322 reads them.
            let folded = |name: &str| name.split_whitespace().collect::<Vec<_>>().join(" ");
            let theirs: lettre::message::Mailbox = text.parse().unwrap();
            prop_assert_eq!(theirs.email.to_string(), address);
            prop_assert_eq!(theirs.name.as_deref().map(folded), mailbox.name.as_deref().map(folded));
        }
    }

    /// A list of mailboxes in header form splits into the same mailboxes again.
    #[test]
    fn a_list_in_header_form_splits_into_its_mailboxes(
        entries in vec((option::of(display_name()), good_address()), 1..6),
    ) {
        let mailboxes: Vec<Mailbox> = entries
            .into_iter()
            .map(|(name, address)| {
                Mailbox::new(name.map(|n| n.trim().to_owned()), super::Address::parse(&address).unwrap())
            })
            .collect();
        let parsed: Vec<Mailbox> = parse_list(&format_list(&mailboxes))
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        prop_assert_eq!(parsed, mailboxes);
    }

    #[test]
    fn a_search_is_accepted_exactly_within_its_bounds(
        text in option::of(prop_oneof![
            text(40),
            around("w", MAX_SEARCH_CHARS),
            (around("w", MAX_SEARCH_CHARS), text(4))
                .prop_map(|(words, blank)| format!("  {words}{}", blank.replace(|c: char| !c.is_whitespace(), " "))),
        ]),
        page in option::of(prop_oneof![-3i64..=3, Just(i64::from(MAX_PAGE)), Just(i64::from(MAX_PAGE) + 1), any::<i64>()]),
        size in option::of(prop_oneof![-3i64..=3, 98i64..=102, any::<i64>()]),
    ) {
        let trimmed = text.as_deref().map(str::trim).filter(|t| !t.is_empty());
        let text_ok = trimmed
            .is_none_or(|t| t.chars().count() <= MAX_SEARCH_CHARS && !t.contains('\0'));
        let number_ok = |n: Option<i64>, max: u32| {
            n.is_none_or(|n| n == 0 || (1..=i64::from(max)).contains(&n))
        };
        let expected_ok = text_ok && number_ok(page, MAX_PAGE) && number_ok(size, MAX_PAGE_SIZE);

        match SearchQuery::parse(text.as_deref(), page, size) {
            Ok(query) => {
                prop_assert!(expected_ok);
                prop_assert_eq!(query.text.as_deref(), trimmed);
                prop_assert_eq!(i64::from(query.page), page.filter(|&p| p != 0).unwrap_or(1));
                prop_assert_eq!(i64::from(query.size), size.filter(|&s| s != 0).unwrap_or(10));
                prop_assert_eq!(query.offset(), (i64::from(query.page) - 1) * i64::from(query.size));
            }
            Err(violations) => {
                prop_assert!(!expected_ok);
                let fields: HashSet<_> = violations.fields().collect();
                prop_assert_eq!(fields.contains(&Field::Search), !text_ok);
                prop_assert_eq!(fields.contains(&Field::Page), !number_ok(page, MAX_PAGE));
                prop_assert_eq!(fields.contains(&Field::Size), !number_ok(size, MAX_PAGE_SIZE));
            }
        }
    }

    /// Every spelling of a UUID names the same email; anything else is a `uuid`
    /// violation of the field asked about.
    #[test]
    fn an_email_id_is_any_spelling_of_a_uuid_and_nothing_else(
        n in any::<u128>(),
        noise in text(40),
        blank in "[ \t]{0,3}",
    ) {
        let uuid = Uuid::from_u128(n);
        for spelling in [
            uuid.hyphenated().to_string(),
            uuid.hyphenated().to_string().to_uppercase(),
            uuid.simple().to_string(),
            uuid.braced().to_string(),
            uuid.urn().to_string(),
        ] {
            let padded = format!("{blank}{spelling}{blank}");
            let id = EmailId::parse(&padded, Field::EmailId).unwrap();
            prop_assert_eq!(id.as_uuid(), uuid);
            prop_assert_eq!(EmailId::parse(&id.to_string(), Field::EmailId), Ok(id));
        }
        match EmailId::parse(&noise, Field::Page) {
            Ok(id) => prop_assert_eq!(Some(id.as_uuid()), Uuid::try_parse(noise.trim()).ok()),
            Err(violations) => {
                let all: Vec<_> = violations.iter().map(|v| (v.field(), v.code.to_string())).collect();
                prop_assert_eq!(all, vec![(Field::Page, "uuid".to_owned())]);
            }
        }
    }
}

#[test]
fn the_strategies_reach_both_sides_of_every_rule() {
    // A property that only ever sees valid (or only invalid) input proves little. The
    // draft strategy is weighted so each field is often broken and often fine; check
    // a fixed sample of it.
    use proptest::{
        strategy::ValueTree,
        test_runner::{Config, TestRng, TestRunner},
    };
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    let strategy = draft();
    let mut accepted = 0;
    let mut broken = HashSet::new();
    for _ in 0..2000 {
        let draft = strategy.new_tree(&mut runner).unwrap().current();
        let fields = broken_fields(&draft);
        if fields.is_empty() {
            accepted += 1;
        }
        broken.extend(fields);
    }
    assert!(accepted > 200, "only {accepted} valid drafts in 2000");
    // The long addresses sit on both sides of the limit, counted in characters.
    assert!(address_ok(&long_address(254, 'x')) && address_ok(&long_address(254, 'é')));
    assert!(!address_ok(&long_address(255, 'x')) && !address_ok(&long_address(255, 'é')));
    assert_eq!(
        broken,
        HashSet::from([
            Field::From,
            Field::To,
            Field::Subject,
            Field::Message,
            Field::Html,
            Field::IdempotencyKey,
            Field::Headers,
            Field::Tags,
        ])
    );
}
