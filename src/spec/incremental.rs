//! Reading a saved file again: only the parts whose text changed are parsed.
//!
//! A save usually changes one service (an `active:` flipped, a weight stepped), and reading the
//! YAML is most of what a save costs cutover (docs/benchmarks.md, "File scale"). [`Reparser`]
//! keeps every entry of `services:` it read, by its first line and exact text, and the whole
//! `listeners:` section the same way; on the next save it reads the file with the kept parts'
//! lines replaced by comment lines: every other line and column stays where it was, and the kept
//! parts go back in their places. Validation always runs on the whole file, so a save's spec,
//! problems and positions are a full parse's.
//!
//! The whole file is read instead whenever the shortcut could read something else than a full
//! parse: no top-level block `services:`, directives or document markers, a top-level key given
//! twice, an entry line indented less than the first entry, a name given twice, a partial read
//! that fails (a syntax error, an alias whose anchor was in a kept part, the YAML budget) or
//! whose entries are not exactly the ones it was given. A part that holds an alias, an anchor or
//! a merge key is never kept: its value may depend on another part of the file.

use std::collections::HashMap;

use serde_saphyr::Spanned;

use super::limits::Limits;
use super::raw::{RawListener, RawService, RawSpec};
use super::validate::{read_yaml, syntax_problem, text_of, too_large, validated, yaml_options};
use super::{Spec, SpecError};

/// A service's entry as read: its name and its value, with their positions.
type Entry = (Spanned<String>, Box<Spanned<RawService>>);

/// An entry kept: its text, and what it was read into.
type Kept = (Box<str>, Entry);

/// What the last read kept for the next.
#[derive(Default)]
struct Memo {
    /// Its entries of `services:`, by first line: their text and what it was read into.
    services: HashMap<usize, Kept>,
    /// Its `listeners:` section: the key's line, the text, and what it was read into.
    listeners: Option<(usize, Box<str>, Vec<Spanned<RawListener>>)>,
}

/// Parses and validates a deployment file save after save, reading again only the services
/// whose text changed (see the module's documentation). Gives what [`super::parse_bytes`] gives.
#[derive(Default)]
pub struct Reparser {
    kept: Memo,
    last: Reread,
}

/// How a read went: the services the file has, how many were kept from the read before, and
/// whether the listeners were.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reread {
    pub services: usize,
    pub kept: usize,
    pub listeners_kept: bool,
}

impl Reparser {
    /// [`super::parse_bytes`], reading again only what changed since the last call.
    pub fn parse_bytes(&mut self, file: &str, bytes: &[u8]) -> Result<Spec, SpecError> {
        self.parse_bytes_with(file, bytes, Limits::current())
    }

    /// [`super::parse_bytes_with`], reading again only what changed since the last call.
    pub fn parse_bytes_with(
        &mut self,
        file: &str,
        bytes: &[u8],
        limits: &Limits,
    ) -> Result<Spec, SpecError> {
        match text_of(bytes, limits) {
            Ok(text) => self.parse_with(file, text, limits),
            Err(problem) => {
                self.forget();
                Err(SpecError {
                    file: file.to_owned(),
                    problems: vec![problem],
                })
            }
        }
    }

    /// [`super::parse_with`], reading again only what changed since the last call.
    pub fn parse_with(
        &mut self,
        file: &str,
        text: &str,
        limits: &Limits,
    ) -> Result<Spec, SpecError> {
        let error = |problems| SpecError {
            file: file.to_owned(),
            problems,
        };
        if let Some(problem) = too_large(text.len(), limits) {
            self.forget();
            return Err(error(vec![problem]));
        }
        let layout = layout(text);
        let mut kept = std::mem::take(&mut self.kept);
        let read = layout
            .as_ref()
            .and_then(|layout| partial(text, layout, &mut kept, limits));
        let (mut raw, reread) = match read {
            Some(read) => read,
            None => match read_yaml(text, yaml_options(limits)) {
                Ok(raw) => (raw, Reread::default()),
                Err(err) => {
                    self.forget();
                    return Err(error(vec![syntax_problem(&err, limits)]));
                }
            },
        };
        let spec = validated(&raw, limits).map_err(error);
        self.last = Reread {
            services: raw.services.0.len(),
            ..reread
        };
        if let Some(layout) = &layout {
            self.kept = keep(layout, &mut raw);
        }
        spec
    }

    /// How the last read went.
    pub fn last(&self) -> Reread {
        self.last
    }

    fn forget(&mut self) {
        self.kept = Memo::default();
        self.last = Reread::default();
    }
}

/// One entry of the top-level `services:` mapping, or the `listeners:` section, as lines of
/// the file.
#[derive(Debug)]
struct Block<'a> {
    /// The line of its name, from 1.
    line: usize,
    /// The column of its name, from 1.
    column: usize,
    /// Its lines, the blank and comment lines after it included, each with its line break.
    text: &'a str,
    /// Where `text` starts in the file.
    start: usize,
    lines: usize,
}

impl Block<'_> {
    /// Whether its value is its text's alone: no alias, anchor or merge key in it.
    fn keepable(&self) -> bool {
        !self.text.contains(['*', '&']) && !self.text.contains("<<")
    }
}

/// Where a file's parts are, found by its lines alone.
#[derive(Debug)]
struct Layout<'a> {
    /// The entries of the top-level block mapping `services:`.
    services: Vec<Block<'a>>,
    /// The top-level `listeners:`, its key line included.
    listeners: Option<Block<'a>>,
}

/// The entries of the top-level block mapping `services:` and the top-level `listeners:`, or
/// `None` where the file's layout is not one this can split by lines alone.
fn layout(text: &str) -> Option<Layout<'_>> {
    #[derive(PartialEq)]
    enum Section {
        Services,
        Listeners,
        Other,
    }
    let mut blocks: Vec<Block> = Vec::new();
    let mut listeners: Option<Block> = None;
    let (mut found, mut section, mut indent) = (false, Section::Other, None);
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += line.len();
        let content = line.trim_end_matches(['\n', '\r']);
        if content.starts_with('%')
            || (i > 0 && (content.starts_with("---") || content.starts_with("...")))
        {
            return None;
        }
        let body = content.trim_start_matches(' ');
        if body.starts_with('\t') {
            return None;
        }
        let depth = content.len() - body.len();
        let blank = body.is_empty() || body.starts_with('#');
        if !blank && depth == 0 {
            // A top-level key.
            section = if key_alone(body, "services") {
                if found {
                    return None;
                }
                found = true;
                Section::Services
            } else if key_alone(body, "listeners") {
                if listeners.is_some() {
                    return None;
                }
                listeners = Some(Block {
                    line: i + 1,
                    column: 1,
                    text: &text[start..offset],
                    start,
                    lines: 1,
                });
                Section::Listeners
            } else {
                Section::Other
            };
            continue;
        }
        match section {
            Section::Other => continue,
            Section::Listeners => {
                let block = listeners.as_mut().expect("in its section");
                block.text = &text[block.start..offset];
                block.lines += 1;
                continue;
            }
            Section::Services => {}
        }
        if blank || depth > *indent.get_or_insert(depth) {
            // Part of the entry above (the comments before the first stay with `services:`).
            if let Some(block) = blocks.last_mut() {
                block.text = &text[block.start..offset];
                block.lines += 1;
            }
        } else if Some(depth) == indent && plain_key(body) {
            blocks.push(Block {
                line: i + 1,
                column: depth + 1,
                text: &text[start..offset],
                start,
                lines: 1,
            });
        } else {
            return None;
        }
    }
    found.then_some(Layout {
        services: blocks,
        listeners,
    })
}

/// `<key>:` alone on its line, or with a comment after it.
fn key_alone(body: &str, key: &str) -> bool {
    body.strip_prefix(key)
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(|rest| {
            let after = rest.trim_start_matches([' ', '\t']);
            after.is_empty() || (after.len() < rest.len() && after.starts_with('#'))
        })
}

/// A mapping key written as a plain or quoted scalar (not a sequence entry, a complex key, a
/// flow collection or a node with properties).
fn plain_key(body: &str) -> bool {
    !body.starts_with([
        '-', '?', ':', ',', '[', ']', '{', '}', '#', '&', '*', '!', '|', '>', '%', '@', '`',
    ])
}

/// The file read with the kept parts' lines as comments, and the kept parts put back in:
/// `None` where that could differ from reading the whole file.
fn partial(
    text: &str,
    layout: &Layout,
    kept: &mut Memo,
    limits: &Limits,
) -> Option<(RawSpec, Reread)> {
    let blocks = &layout.services;
    // The first entry is always read: its name where it was written pins `services:` down as
    // the mapping the others belong to.
    let reuse: Vec<bool> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            i > 0
                && b.keepable()
                && kept
                    .services
                    .get(&b.line)
                    .is_some_and(|(t, _)| **t == *b.text)
        })
        .collect();
    let reused = reuse.iter().filter(|r| **r).count();
    let listeners = layout.listeners.as_ref().filter(|b| {
        b.keepable()
            && kept
                .listeners
                .as_ref()
                .is_some_and(|(line, t, _)| *line == b.line && **t == *b.text)
    });
    if reused == 0 && listeners.is_none() {
        return None;
    }
    let mut skipped: Vec<&Block> = blocks
        .iter()
        .zip(&reuse)
        .filter(|(_, r)| **r)
        .map(|(b, _)| b)
        .chain(listeners)
        .collect();
    skipped.sort_by_key(|b| b.start);
    let mut lines = String::with_capacity(text.len());
    let (mut at, mut nodes, mut bytes) = (0, 0usize, 0usize);
    for b in skipped {
        lines.push_str(&text[at..b.start]);
        // A comment line, not an empty one: a block scalar just above keeps its trailing empty
        // lines (`|+`), and would keep these too.
        for _ in 0..b.lines {
            lines.push_str("#\n");
        }
        at = b.start + b.text.len();
        nodes = nodes.saturating_add(node_bound(b.text));
        bytes = bytes.saturating_add(b.text.len());
    }
    lines.push_str(&text[at..]);
    // The budget is the whole file's: what the kept parts may hold at most is taken off, so
    // that a file the budget refuses is never read in part (a refusal reads it whole).
    let mut options = yaml_options(limits);
    let budget = options.budget.as_mut()?;
    budget.max_nodes = budget.max_nodes.checked_sub(nodes)?;
    budget.max_events = budget.max_events.checked_sub(nodes.checked_mul(2)?)?;
    budget.max_total_scalar_bytes = budget
        .max_total_scalar_bytes
        .checked_sub(bytes.checked_mul(2)?)?;
    let mut raw = read_yaml(&lines, options).ok()?;
    let fresh: Vec<&Block> = blocks
        .iter()
        .zip(&reuse)
        .filter(|(_, r)| !**r)
        .map(|(b, _)| b)
        .collect();
    let same = raw.services.0.len() == fresh.len()
        && raw
            .services
            .0
            .iter()
            .zip(&fresh)
            .all(|((name, _), b)| at_block(name, b));
    // With its key a comment, the file has no listeners but the kept ones.
    if !same || (listeners.is_some() && !raw.listeners.is_empty()) {
        return None;
    }
    // A name given twice is the parser's error, which it did not see with one of the two out.
    let mut names = std::collections::HashSet::with_capacity(blocks.len());
    let fresh_names = raw.services.0.iter().map(|(name, _)| name.value.as_str());
    let kept_names = blocks
        .iter()
        .zip(&reuse)
        .filter(|(_, r)| **r)
        .map(|(b, _)| kept.services[&b.line].1.0.value.as_str());
    if !fresh_names.chain(kept_names).all(|name| names.insert(name)) {
        return None;
    }
    let mut read = std::mem::take(&mut raw.services.0).into_iter();
    raw.services.0 = blocks
        .iter()
        .zip(&reuse)
        .map(|(b, r)| {
            if *r {
                kept.services.remove(&b.line).expect("looked up above").1
            } else {
                read.next().expect("counted above")
            }
        })
        .collect();
    if listeners.is_some() {
        raw.listeners = kept.listeners.take().expect("looked up above").2;
    }
    let reread = Reread {
        services: 0,
        kept: reused,
        listeners_kept: listeners.is_some(),
    };
    Some((raw, reread))
}

/// Whether a name read is the one written at `block`'s first line.
fn at_block(name: &Spanned<String>, block: &Block) -> bool {
    name.referenced.line() == block.line as u64 && name.referenced.column() == block.column as u64
}

/// What to keep of what was read for the next read: the entries of `services:` when they are
/// exactly the blocks found, and the listeners when they were read from their section.
fn keep(layout: &Layout, raw: &mut RawSpec) -> Memo {
    let blocks = &layout.services;
    let entries = std::mem::take(&mut raw.services.0);
    let same = entries.len() == blocks.len()
        && entries
            .iter()
            .zip(blocks)
            .all(|((name, _), b)| at_block(name, b));
    let services = if same {
        blocks
            .iter()
            .zip(entries)
            .filter(|(b, _)| b.keepable())
            .map(|(b, entry)| (b.line, (Box::from(b.text), entry)))
            .collect()
    } else {
        HashMap::new()
    };
    let listeners = layout
        .listeners
        .as_ref()
        .filter(|b| b.keepable())
        .and_then(|b| {
            let within = |l: &Spanned<RawListener>| {
                let line = l.referenced.line();
                line > b.line as u64 && line < (b.line + b.lines) as u64
            };
            (!raw.listeners.is_empty() && raw.listeners.iter().all(within)).then(|| {
                (
                    b.line,
                    Box::from(b.text),
                    std::mem::take(&mut raw.listeners),
                )
            })
        });
    Memo {
        services,
        listeners,
    }
}

/// At most how many YAML nodes `text` holds when it has no alias: each node is a collection
/// started by, or a key, value or item introduced by, one of `: ? - , [ {`, at most three per
/// indicator (a mapping, its first key and its value), and a lone scalar or empty value.
fn node_bound(text: &str) -> usize {
    let indicators = text.bytes().filter(|b| b":?-,[{".contains(b)).count();
    indicators.saturating_mul(3).saturating_add(2)
}

#[cfg(test)]
mod tests;
