//! The module dependency rules of docs/architecture.md, checked against the code.
//!
//! The document's table "Module dependencies" lists, for every module of the library, the other
//! modules it imports. This test reads the library's module tree from `lib.rs` (test-only
//! modules left out), collects every `crate::<module>` a module names (in `use`, in paths and
//! inside macro calls) and requires the table to say exactly that: an import the table does not
//! list, or a listed one that is gone, fails with what to write. The table must also stay free
//! of cycles, so that data keeps flowing one way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens as _;
use syn::visit::Visit;

const DOC: &str = "docs/architecture.md";
const TABLE_HEADING: &str = "## Module dependencies";

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn the_module_dependencies_are_those_docs_architecture_lists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let actual = imports(&root.join("src"));
    let doc = std::fs::read_to_string(root.join(DOC)).expect("docs/architecture.md");
    let listed = table(&doc);

    let mut problems = Vec::new();
    for (module, uses) in &actual {
        match listed.get(module) {
            None => problems.push(format!(
                "module `{module}` has no row: add | `{module}` | {} |",
                row_text(uses)
            )),
            Some(said) if said != uses => problems.push(format!(
                "module `{module}` imports {}, the table says {}: write | `{module}` | {} | \
                 (and check the new arrow keeps the flow one-way)",
                row_text(uses),
                row_text(said),
                row_text(uses)
            )),
            Some(_) => {}
        }
    }
    for module in listed.keys().filter(|m| !actual.contains_key(*m)) {
        problems.push(format!(
            "the table has a row for `{module}`, which is not a module"
        ));
    }
    if let Some(cycle) = cycle(&listed) {
        problems.push(format!("the table has a cycle: {}", cycle.join(" -> ")));
    }
    assert!(
        problems.is_empty(),
        "{DOC}, \"{TABLE_HEADING}\", is not true to the code:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_check_sees_imports_in_use_trees_paths_and_macros_and_skips_tests() {
    let file: syn::File = syn::parse_str(
        r#"
        use crate::{spec::{self, Spec}, ids};
        use super::sibling;
        fn f() { let _ = crate::node::NodeInfo::default(); tracing::info!("{}", crate::xds::X); }
        #[cfg(test)]
        mod tests { use crate::app; }
        "#,
    )
    .unwrap();
    let mut seen = BTreeSet::new();
    let mut visitor = Imports { seen: &mut seen };
    visitor.visit_file(&file);
    let seen: Vec<&str> = seen.iter().map(String::as_str).collect();
    assert_eq!(seen, ["ids", "node", "spec", "xds"]);
}

#[test]
fn the_table_is_read_and_a_cycle_is_found() {
    let doc = "# x\n\n## Module dependencies\n\n| module | imports |\n|---|---|\n\
               | `a` | `b`, `c` |\n| `b` | — |\n| `c` | `a` |\n\n## Next\n| `z` | `a` |\n";
    let t = table(doc);
    assert_eq!(t.len(), 3);
    assert_eq!(t["a"], BTreeSet::from(["b".to_owned(), "c".to_owned()]));
    assert!(t["b"].is_empty());
    assert_eq!(cycle(&t).unwrap(), ["a", "c", "a"]);
}

fn row_text(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "—".to_owned()
    } else {
        set.iter()
            .map(|m| format!("`{m}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The rows of the table under [`TABLE_HEADING`]: module → the modules it imports.
fn table(doc: &str) -> Graph {
    let start = doc
        .find(TABLE_HEADING)
        .unwrap_or_else(|| panic!("{DOC} has no \"{TABLE_HEADING}\" section"));
    let section = &doc[start + TABLE_HEADING.len()..];
    let section = section.find("\n## ").map_or(section, |end| &section[..end]);
    let names = |cell: &str| -> BTreeSet<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let mut rows = Graph::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').collect();
        let (Some(modules), Some(uses)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        for module in names(modules) {
            rows.insert(module, names(uses));
        }
    }
    rows
}

/// A cycle of the graph, if it has one (depth-first search).
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(graph, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(graph, m, &mut Vec::new(), &mut done))
}

/// Every module of the library (the `mod` items of `lib.rs` that are not test-only) with the
/// other modules its files import.
fn imports(src: &Path) -> Graph {
    let lib = parse(&src.join("lib.rs"));
    let mut graph = Graph::new();
    for item in &lib.items {
        let syn::Item::Mod(m) = item else { continue };
        if is_test_only(&m.attrs) {
            continue;
        }
        let name = m.ident.to_string();
        let mut seen = BTreeSet::new();
        collect(&module_file(src, &name, &m.attrs), &mut seen);
        seen.remove(&name);
        graph.insert(name, seen);
    }
    graph
}

/// The file of `mod name;` declared in a file of `dir`: `#[path]`, `name.rs` or `name/mod.rs`.
fn module_file(dir: &Path, name: &str, attrs: &[syn::Attribute]) -> PathBuf {
    if let Some(path) = attrs.iter().find_map(|a| match &a.meta {
        syn::Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    }) {
        return dir.join(path);
    }
    let flat = dir.join(format!("{name}.rs"));
    if flat.exists() {
        flat
    } else {
        dir.join(name).join("mod.rs")
    }
}

/// The imports of one file and of the non-test modules it declares, recursively.
fn collect(file: &Path, seen: &mut BTreeSet<String>) {
    let parsed = parse(file);
    Imports { seen }.visit_file(&parsed);
    // `a.rs` keeps its submodules in `a/`; `a/mod.rs` in `a/`.
    let dir = if file.file_name().is_some_and(|n| n == "mod.rs") {
        file.parent().expect("a parent").to_path_buf()
    } else {
        file.with_extension("")
    };
    for item in &parsed.items {
        if let syn::Item::Mod(m) = item
            && m.content.is_none()
            && !is_test_only(&m.attrs)
        {
            collect(&module_file(&dir, &m.ident.to_string(), &m.attrs), seen);
        }
    }
}

fn parse(file: &Path) -> syn::File {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    syn::parse_file(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", file.display()))
}

/// `#[cfg(test)]` (alone or in `any(...)` with other test settings): not part of the library
/// a user gets.
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && {
            let text = a.meta.to_token_stream().to_string();
            text.contains("test") && !text.contains("not")
        }
    })
}

/// Collects `X` of every `crate::X` a file names, skipping test-only items.
struct Imports<'a> {
    seen: &'a mut BTreeSet<String>,
}

impl Imports<'_> {
    fn use_tree(&mut self, tree: &syn::UseTree, under_crate: bool) {
        match tree {
            syn::UseTree::Path(p) if !under_crate && p.ident == "crate" => {
                self.use_tree(&p.tree, true);
            }
            syn::UseTree::Path(_) if !under_crate => {}
            syn::UseTree::Path(p) => {
                self.seen.insert(p.ident.to_string());
            }
            syn::UseTree::Name(n) if under_crate => {
                self.seen.insert(n.ident.to_string());
            }
            syn::UseTree::Rename(r) if under_crate => {
                self.seen.insert(r.ident.to_string());
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(t, under_crate);
                }
            }
            _ => {}
        }
    }

    fn tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        for (i, t) in tokens.iter().enumerate() {
            match t {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id) if id == "crate" => {
                    if let (
                        Some(TokenTree::Punct(a)),
                        Some(TokenTree::Punct(b)),
                        Some(TokenTree::Ident(m)),
                    ) = (tokens.get(i + 1), tokens.get(i + 2), tokens.get(i + 3))
                        && a.as_char() == ':'
                        && b.as_char() == ':'
                    {
                        self.seen.insert(m.to_string());
                    }
                }
                _ => {}
            }
        }
    }
}

impl<'ast> Visit<'ast> for Imports<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs: &[syn::Attribute] = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            _ => &[],
        };
        if !is_test_only(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&u.tree, false);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let mut segments = path.segments.iter();
        if let (Some(first), Some(second)) = (segments.next(), segments.next())
            && first.ident == "crate"
        {
            self.seen.insert(second.ident.to_string());
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
    }
}
