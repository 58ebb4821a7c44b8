//! The router's top-level modules import downwards only (ARCHITECTURE.md, invariant
//! 11): this test reads `router/src` and fails on an import circle between them, or on
//! an import the "must not" column of ARCHITECTURE.md's table forbids, naming the files
//! that make it. Every `crate::x` path counts, in code and in doc links alike, grouped
//! ones (`use crate::{a, b::c}`) included.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Module → the modules it names, each with the first file that does.
type Graph = BTreeMap<String, BTreeMap<String, PathBuf>>;

const HANDLERS: [&str; 3] = ["proxy", "api", "dashboard"];

#[test]
fn top_level_modules_form_no_import_circle() {
    let graph = graph();
    assert!(graph.len() > 15, "modules found: {:?}", graph.keys());
    if let Some(circle) = find_circle(&graph) {
        let edges: Vec<String> = circle
            .windows(2)
            .map(|w| format!("{} -> {} ({})", w[0], w[1], graph[&w[0]][&w[1]].display()))
            .collect();
        panic!("import circle:\n  {}", edges.join("\n  "));
    }
}

#[test]
fn the_layers_below_the_handlers_do_not_import_them() {
    let graph = graph();
    let forbidden: &[(&str, &[&str])] = &[
        ("state", &["proxy", "api", "dashboard", "openapi", "app"]),
        ("proxy", &["openapi", "app", "api", "dashboard"]),
        ("api", &["openapi", "app", "proxy", "dashboard"]),
        ("dashboard", &["openapi", "app", "proxy"]),
    ];
    for (module, banned) in forbidden {
        for b in *banned {
            if let Some(file) = graph[*module].get(*b) {
                panic!("{module} imports {b} ({})", file.display());
            }
        }
    }
    // `auth` holds types and checks only: no other router module.
    assert_eq!(graph["auth"].keys().collect::<Vec<_>>(), Vec::<&String>::new());
    for handler in HANDLERS {
        assert!(
            graph[handler].contains_key("state"),
            "{handler} reaches the router through state"
        );
    }
}

#[test]
fn grouped_paths_are_read_too() {
    let mut found = BTreeSet::new();
    named_modules(
        "use crate::{api, store::Store, state::{AppState, Services}};",
        &mut found,
    );
    named_modules("see [`crate::keys::KeyRing`] and crate::clock", &mut found);
    let found: Vec<_> = found.into_iter().collect();
    assert_eq!(found, ["api", "clock", "keys", "state", "store"]);
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeMap::new();
    for entry in fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" || !(path.is_dir() || path.extension().is_some_and(|e| e == "rs")) {
            continue;
        }
        let files = modules.entry(name).or_insert_with(Vec::new);
        rust_files(&path, files);
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .into_iter()
        .map(|(module, files)| {
            let mut edges = BTreeMap::new();
            for file in files {
                let mut named = BTreeSet::new();
                named_modules(&fs::read_to_string(&file).unwrap(), &mut named);
                for target in named {
                    if target != module && names.contains(&target) {
                        edges.entry(target).or_insert_with(|| file.clone());
                    }
                }
            }
            (module, edges)
        })
        .collect()
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// Adds the first segment after every `crate::` in `text`, and each item's first
/// segment in `crate::{…}` groups.
fn named_modules(text: &str, out: &mut BTreeSet<String>) {
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphabetic() || c == '_') => {
                        out.insert(ident(&group[j..]));
                        item_start = false;
                    }
                    c if item_start && !c.is_whitespace() => item_start = false,
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
}

fn ident(text: &str) -> String {
    text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// A circle as a path that starts and ends at the same module, if there is one.
fn find_circle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(node: &str, graph: &Graph, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flat_map(|e| e.keys()) {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
}
