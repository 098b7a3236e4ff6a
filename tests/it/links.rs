//! The README and docs/: every relative link leads to a file of the repository, and
//! every `#anchor` to a heading of its page (as GitHub makes anchors of headings); the
//! README stays short enough to read. External links are not fetched.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// README.md and every page under docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![Path::new(ROOT).join("README.md")];
    for entry in std::fs::read_dir(Path::new(ROOT).join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages.sort();
    pages
}

/// The text of a page outside its code blocks (links in examples are not links).
fn prose(text: &str) -> String {
    let mut inside = false;
    text.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                inside = !inside;
                return false;
            }
            !inside
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The anchors GitHub gives a page's headings: lowercase, punctuation dropped, spaces as
/// hyphens; a repeated heading gets `-1`, `-2`…
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in prose(text).lines() {
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        let title = heading.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let mut candidate = slug.clone();
        let mut n = 1;
        while seen.contains(&candidate) {
            candidate = format!("{slug}-{n}");
            n += 1;
        }
        seen.insert(candidate);
    }
    seen
}

/// Every `[text](target)` of a page's prose.
fn links(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut found = Vec::new();
    let mut rest = prose.as_str();
    while let Some(start) = rest.find("](") {
        rest = &rest[start + 2..];
        let Some(end) = rest.find(')') else { break };
        found.push(rest[..end].trim().to_owned());
        rest = &rest[end..];
    }
    found
}

#[test]
fn every_link_of_the_readme_and_the_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for link in links(&text) {
            if link.starts_with("http://")
                || link.starts_with("https://")
                || link.starts_with("mailto:")
            {
                continue;
            }
            checked += 1;
            let (path, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            if !target.exists() {
                broken.push(format!("{}: {link}: no such file", page.display()));
                continue;
            }
            if !anchor.is_empty() && target.extension().is_some_and(|e| e == "md") {
                let headings = anchors(&std::fs::read_to_string(&target).unwrap());
                if !headings.contains(anchor) {
                    broken.push(format!(
                        "{}: {link}: no heading #{anchor} (there are {headings:?})",
                        page.display()
                    ));
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} relative links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_stays_short_and_names_the_two_commands() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 300,
        "README.md has {lines} lines; the rest belongs in docs/"
    );
    for needle in [
        "make run",
        "make test",
        "## Prerequisites",
        "## Docker quickstart",
    ] {
        assert!(readme.contains(needle), "README.md lacks {needle:?}");
    }
    // The pictures it shows are in the repository, with the sources they are made from.
    for picture in ["architecture", "deployment"] {
        for extension in ["svg", "dot"] {
            let path = Path::new(ROOT).join(format!("docs/{picture}.{extension}"));
            assert!(
                path.exists(),
                "{} is missing (make diagrams)",
                path.display()
            );
        }
    }
}

#[test]
fn the_anchor_rules_match_githubs() {
    let made = anchors(
        "# The REST API: sending\n## API keys and limits\n## Docker\n## Docker\n```\n# not a heading\n```\n",
    );
    let expected: BTreeSet<String> = [
        "the-rest-api-sending",
        "api-keys-and-limits",
        "docker",
        "docker-1",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(made, expected);
    assert_eq!(
        links("see [a](b.md#c) and `[x](y)`\n```\n[no](link)\n```\n"),
        ["b.md#c", "y"]
    );
}
