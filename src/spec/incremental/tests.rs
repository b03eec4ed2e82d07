use proptest::prelude::*;

use super::*;
use crate::spec::parse_with;

/// A file with one listener routing to `n` services, each written its own way.
fn file(n: usize) -> String {
    let mut text = String::from(
        "# a comment at the top\nlisteners:\n  - name: public\n    address: 127.0.0.1:10000\n    routes:\n",
    );
    for s in 0..n {
        text.push_str(&format!(
            "      - match: {{ prefix: /s{s}/ }}\n        service: s{s}\n"
        ));
    }
    text.push_str("services:   # the applications\n");
    for s in 0..n {
        text.push_str(&service(s, 0));
    }
    text
}

/// Service `s` in one of several layouts; `edit` changes what it says.
fn service(s: usize, edit: usize) -> String {
    let active = if edit.is_multiple_of(2) {
        "blue"
    } else {
        "green"
    };
    match s % 5 {
        0 => format!(
            "  s{s}:\n    versions:\n      blue: {{ endpoints: [127.0.0.1:{p}] }}\n      green: {{ endpoints: [127.0.0.1:{q}] }}\n    active: {active}\n",
            p = 8000 + s,
            q = 9000 + s
        ),
        1 => format!(
            "  \"s{s}\":\n    # a comment inside\n    versions:\n      blue:\n        endpoints:\n          - 127.0.0.1:{p}\n      green:\n        endpoints: [\n          127.0.0.1:{q}]\n    strategy:\n      canary: {{ stable: blue, canary: green, weight: {w} }}\n\n",
            p = 8000 + s,
            q = 9000 + s,
            w = 10 + edit
        ),
        2 => format!(
            "  s{s}:\n    versions:\n      blue: {{ endpoints: [127.0.0.1:{p}] }}\n      green: {{ endpoints: [127.0.0.1:{q}] }}\n    active: {active}\n    rules:\n      - match:\n          header:\n            x-group: beta\n        version: green\n",
            p = 8000 + s,
            q = 9000 + s
        ),
        3 => format!(
            "  's{s}': {{ versions: {{ blue: {{ endpoints: [127.0.0.1:{p}] }},\n      green: {{ endpoints: [127.0.0.1:{q}] }} }},\n      active: {active} }}\n# a comment at column 0\n",
            p = 8000 + s,
            q = 9000 + s
        ),
        _ => format!(
            "  s{s}:\n    versions:\n      blue: {{ endpoints: [127.0.0.1:{p}] }}\n      green: {{ endpoints: [127.0.0.1:{q}] }}\n    active: >-\n      {active}\n",
            p = 8000 + s,
            q = 9000 + s
        ),
    }
}

/// Reads `text` with `reparser`, which must say what a full parse says.
fn reads_as_a_full_parse(reparser: &mut Reparser, text: &str) {
    assert_eq!(
        reparser.parse_with("t.yaml", text, &Limits::default()),
        full(text),
        "{text}"
    );
}

/// What a full parse says, as the reparser must say it.
fn full(text: &str) -> Result<Spec, SpecError> {
    parse_with("t.yaml", text, &Limits::default())
}

#[test]
fn the_layouts_are_valid_and_are_split_into_their_services() {
    let text = file(10);
    full(&text).expect("valid");
    let layout = layout(&text).expect("split");
    assert_eq!(layout.listeners.as_ref().map(|b| b.line), Some(2));
    let blocks = layout.services;
    assert_eq!(blocks.len(), 10);
    assert!(blocks.iter().all(|b| b.column == 3));
    assert!(blocks[1].text.starts_with("  \"s1\":"));
}

#[test]
fn an_edit_of_one_service_reads_that_service_again_and_keeps_the_others() {
    let mut reparser = Reparser::default();
    let mut text = file(20);
    let first = reparser.parse_with("t.yaml", &text, &Limits::default());
    assert_eq!(first, full(&text));
    assert_eq!(reparser.last(), Reread::default().with(20, 0, false));
    for (s, edit) in [(7, 1), (12, 1), (3, 1), (7, 2)] {
        text = text.replace(&service(s, edit - 1), &service(s, edit));
        let spec = reparser.parse_with("t.yaml", &text, &Limits::default());
        assert_eq!(spec, full(&text), "after an edit of s{s}");
        // The first service is always read, and so is the edited one; the listeners are kept.
        assert_eq!(
            reparser.last(),
            Reread::default().with(20, 18, true),
            "s{s}"
        );
    }
    // A line added above every service moves them all: read whole, then kept again.
    text = text.replacen("listeners:", "\nlisteners:", 1);
    reads_as_a_full_parse(&mut reparser, &text);
    assert_eq!(reparser.last().kept, 0);
    reads_as_a_full_parse(&mut reparser, &text);
    assert_eq!(reparser.last().kept, 19);
    // A route changed: the listeners are read again, the services kept.
    text = text.replacen("prefix: /s3/", "prefix: /s3-moved/", 1);
    reads_as_a_full_parse(&mut reparser, &text);
    assert_eq!(reparser.last(), Reread::default().with(20, 19, false));
    reads_as_a_full_parse(&mut reparser, &text);
    assert_eq!(reparser.last(), Reread::default().with(20, 19, true));
}

impl Reread {
    fn with(self, services: usize, kept: usize, listeners_kept: bool) -> Reread {
        Reread {
            services,
            kept,
            listeners_kept,
        }
    }
}

#[test]
fn a_block_scalar_that_keeps_its_trailing_lines_keeps_only_its_own() {
    // s2 ends with a header value written `|+`: the lines after it, were they empty, would be
    // its own.
    let kept_lines = "    active: blue\n    rules:\n      - version: green\n        match:\n          header:\n            x-group: |+\n              beta\n\n";
    let text = file(4).replace(
        &service(2, 0),
        &format!("  s2:\n    versions:\n      blue: {{ endpoints: [127.0.0.1:8002] }}\n      green: {{ endpoints: [127.0.0.1:9002] }}\n{kept_lines}"),
    );
    let mut reparser = Reparser::default();
    reads_as_a_full_parse(&mut reparser, &text);
    let edited = text.replace("127.0.0.1:8002", "127.0.0.1:8012");
    // s2 is read again, s3 after it is kept.
    reads_as_a_full_parse(&mut reparser, &edited);
    assert_eq!(reparser.last().kept, 2);
}

#[test]
fn problems_are_a_full_parses_whether_in_an_edited_service_or_a_kept_one() {
    let mut reparser = Reparser::default();
    let text = file(10);
    reparser
        .parse_with("t.yaml", &text, &Limits::default())
        .unwrap();
    // An unknown version in s6, the rest kept: the problem is where a full parse puts it.
    let bad = text.replace("  s5:\n    versions:", "  s5:\n    versionz:");
    let err = reparser.parse_with("t.yaml", &bad, &Limits::default());
    assert!(err.is_err());
    assert_eq!(err, full(&bad));
    // A syntax error: the whole file is read, and said where it is.
    let broken = text.replace("    active: blue\n", "    active: [blue\n");
    reads_as_a_full_parse(&mut reparser, &broken);
    // A kept service that a later edit makes a duplicate of another.
    let twice = text.replace("  s5:\n", "  s4:\n");
    reads_as_a_full_parse(&mut reparser, &text);
    let err = reparser.parse_with("t.yaml", &twice, &Limits::default());
    assert!(err.is_err(), "a duplicate service");
    assert_eq!(err, full(&twice));
}

#[test]
fn an_alias_reads_the_whole_file_and_a_changed_anchor_reaches_every_alias() {
    let text = "listeners:\n  - name: p\n    address: 127.0.0.1:10000\n    routes:\n      - match: { prefix: /a }\n        service: a\n      - match: { prefix: /b }\n        service: b\nservices:\n  a:\n    versions: &v\n      blue: { endpoints: [127.0.0.1:8001] }\n    active: blue\n  b:\n    versions: *v\n    active: blue\n  c:\n    versions: { blue: { endpoints: [127.0.0.1:8003] } }\n    active: blue\n";
    let mut reparser = Reparser::default();
    reads_as_a_full_parse(&mut reparser, text);
    let edited = text.replace("8001", "8002");
    reads_as_a_full_parse(&mut reparser, &edited);
    // a (the anchor) and b (the alias) are read again; c alone could be kept.
    assert!(reparser.last().kept <= 1);
}

#[test]
fn the_yaml_budget_counts_the_kept_services() {
    let text = file(30);
    // A budget the file fits in, but not with one more service's values.
    let mut limits = Limits::default();
    let nodes = {
        let report = std::rc::Rc::new(std::cell::Cell::new(0));
        let seen = report.clone();
        let mut options = yaml_options(&limits);
        options = options.with_budget_report(move |r| seen.set(r.nodes));
        read_yaml(&text, options).unwrap();
        report.get()
    };
    let grown = text.replacen(
        "      - 127.0.0.1:8006\n",
        &"      - 127.0.0.1:8006\n".repeat(40),
        1,
    );
    limits.yaml_nodes = nodes + 10;
    assert!(full(&text).is_ok());
    let mut reparser = Reparser::default();
    assert!(reparser.parse_with("t.yaml", &text, &limits).is_ok());
    let whole = parse_with("t.yaml", &grown, &limits);
    assert!(whole.is_err(), "the grown file is over the budget");
    assert_eq!(reparser.parse_with("t.yaml", &grown, &limits), whole);
}

#[test]
fn layouts_it_cannot_split_by_lines_are_read_whole() {
    for text in [
        "services: { a: { versions: { b: { endpoints: [127.0.0.1:1] } }, active: b } }\n",
        "services:\n  - a\n",
        "%YAML 1.2\n---\nservices:\n  a: {}\n",
        "services:\n  a: {}\n---\nservices:\n  b: {}\n",
        "services:\n    a: {}\n  b: {}\n",
        "services:\n  a: {}\nservices:\n  b: {}\n",
    ] {
        assert!(layout(text).is_none(), "{text}");
        let mut reparser = Reparser::default();
        reads_as_a_full_parse(&mut reparser, text);
        reads_as_a_full_parse(&mut reparser, text);
        assert_eq!(reparser.last().kept, 0, "{text}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any history of edits (a service changed, added, removed, renamed to a duplicate, a line
    /// inserted, a syntax error, an alias) reads, save after save, what a full parse reads.
    #[test]
    fn every_history_of_edits_reads_what_a_full_parse_reads(
        edits in proptest::collection::vec((0usize..10, 0usize..12, 0usize..4), 1..12)
    ) {
        let mut services: Vec<(usize, usize)> = (0..12).map(|s| (s, 0)).collect();
        let (mut extra, mut before, mut prefix) = (String::new(), String::new(), 0);
        let mut reparser = Reparser::default();
        for (kind, at, n) in edits {
            let at = at % services.len().max(1);
            match kind {
                0 | 1 => if let Some(s) = services.get_mut(at) { s.1 += 1 + n },
                2 => services.insert(at, (12 + at * 7 + n, 0)),
                3 => if services.len() > 1 { services.remove(at); },
                4 => { let (first, len) = (services[0], services.len()); services[at % len] = (first.0, 1) },
                5 => extra = if extra.is_empty() { "# inserted\n".into() } else { String::new() },
                6 => extra = "x: [unclosed\n".into(),
                7 => extra = "anchors: &a { x: 1 }\n".into(),
                8 => prefix = n,
                _ => before = [
                    "",
                    "# inserted\n",
                    "x: [unclosed\n",
                    "x: \"unterminated\n",
                ][n].into(),
            }
            let mut text = before.clone();
            text.push_str(&format!("listeners:\n  - name: public\n    address: 127.0.0.1:10000\n    routes:\n      - match: {{ prefix: /{prefix} }}\n        service: s0\n"));
            text.push_str(&extra);
            text.push_str("services:\n");
            for (s, edit) in &services {
                text.push_str(&service(*s, *edit));
            }
            let got = reparser.parse_with("t.yaml", &text, &Limits::default());
            prop_assert_eq!(got, full(&text), "{}", text);
        }
    }
}
