//! The structure of the crate, checked from its source: which top-level module of `src/`
//! names which (`crate::<module>` in code, comments left out), so that the layering stays:
//! no import cycle between top-level modules, the domain imports neither the backends
//! (`store`) nor the gRPC layer (`api`), and the store imports no transport.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The domain: records, their rules and the store ports they need.
const DOMAIN: [&str; 7] = [
    "auth",
    "directory",
    "locale",
    "notify",
    "settings",
    "templates",
    "tokens",
];

/// Every file under each of `roots` (a root that is a file: itself; one not there: none).
fn files_under(roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut left = roots.to_vec();
    while let Some(path) = left.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                left.push(entry.unwrap().path());
            }
        } else if path.exists() {
            found.push(path);
        }
    }
    found
}

/// Top-level module -> the top-level modules its files name.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    for path in files_under(std::slice::from_ref(&src)) {
        if path.extension() != Some("rs".as_ref()) {
            continue;
        }
        let relative = path.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let names: &mut BTreeSet<String> = graph.entry(module.clone()).or_default();
        for name in crate_names(&text) {
            if name != module {
                names.insert(name);
            }
        }
    }
    graph
}

/// The lines of `text` without their `//` comments (doc comments included).
fn code(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
}

/// Every top-level module `text` names: `crate::x`, and each of `crate::{x, y::z}`.
fn crate_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let code: String = code(text).collect::<Vec<_>>().join("\n");
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            names.extend(group.split(',').map(ident).filter(|n| !n.is_empty()));
        } else {
            names.insert(ident(rest));
        }
    }
    names.remove("");
    names
}

/// A cycle of `graph`, if it has one, as the modules along it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        graph: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut found = path[start..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(graph, next, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut Vec::new(), &mut done))
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let _watchdog = crate::support::watchdog();
    let graph = graph();
    if let Some(found) = cycle(&graph) {
        panic!(
            "top-level modules import each other: {}",
            found.join(" -> ")
        );
    }
}

#[test]
fn the_domain_imports_neither_the_store_nor_the_grpc_layer() {
    let _watchdog = crate::support::watchdog();
    let graph = graph();
    for module in DOMAIN {
        let names = &graph[module];
        for forbidden in ["store", "api", "server"] {
            assert!(
                !names.contains(forbidden),
                "domain module {module} imports crate::{forbidden}: the domain defines the ports it \
                 needs (store/ implements them) and knows no transport"
            );
        }
    }
    for module in DOMAIN {
        assert_no_tonic(module);
    }
    assert!(
        graph["ports"].is_empty(),
        "ports, shared by the domain and the store, imports {:?}",
        graph["ports"]
    );
}

#[test]
fn the_store_imports_no_transport() {
    let _watchdog = crate::support::watchdog();
    let graph = graph();
    for forbidden in ["api", "server", "mail"] {
        assert!(
            !graph["store"].contains(forbidden),
            "store imports crate::{forbidden}"
        );
    }
    assert_no_tonic("store");
}

/// The files of `src/<module>` (a folder or one file) that name tonic in code.
fn assert_no_tonic(module: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for path in files_under(&[src.join(module), src.join(format!("{module}.rs"))]) {
        if path.extension() == Some("rs".as_ref()) {
            let text = std::fs::read_to_string(&path).unwrap();
            let names_tonic = code(&text)
                .any(|line| line.contains("tonic::") || line.trim_start().starts_with("use tonic"));
            assert!(!names_tonic, "{} uses tonic", path.display());
        }
    }
}

/// docs/ARCHITECTURE.md's Layout names every file of `src/`: each top-level module by its
/// path (`src/notify/`, `src/quota.rs`), each file within a folder by its name, so that the
/// map a newcomer reads first matches the tree.
#[test]
fn the_layout_in_architecture_md_names_every_file() {
    let _watchdog = crate::support::watchdog();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let layout = doc
        .split("## Layout")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Layout section");
    let words: BTreeSet<&str> = layout
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.' || c == '/'))
        .flat_map(|word| word.split('/'))
        .map(|word| word.trim_end_matches('.'))
        .collect();
    let src = root.join("src");
    let mut missing = Vec::new();
    let files = files_under(std::slice::from_ref(&src));
    for path in &files {
        let relative = path
            .strip_prefix(&src)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let named = match relative.split_once('/') {
            None => layout.contains(&format!("src/{relative}")),
            Some((top, _)) => {
                let name = path.file_name().unwrap().to_str().unwrap();
                let stem = name.trim_end_matches(".rs");
                layout.contains(&format!("src/{top}/"))
                    && (words.contains(name) || words.contains(stem))
            }
        };
        if !named {
            missing.push(relative);
        }
    }
    missing.sort();
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md's Layout does not name: {missing:?}"
    );
    // And names no file that is not there.
    let names: BTreeSet<&str> = files
        .iter()
        .map(|path| path.file_name().unwrap().to_str().unwrap())
        .collect();
    let ghosts: Vec<&&str> = words
        .iter()
        .filter(|w| w.ends_with(".rs") && !names.contains(**w) && !root.join(w).exists())
        .collect();
    assert!(
        ghosts.is_empty(),
        "docs/ARCHITECTURE.md's Layout names files src/ does not hold: {ghosts:?}"
    );
    // The README's short one names every entry at the top of src/.
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let short = readme
        .split("## Layout")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Layout section in the README");
    let mut unnamed: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if entry.path().is_dir() {
                format!("{name}/")
            } else {
                name
            }
        })
        .filter(|name| !short.contains(name.as_str()))
        .collect();
    unnamed.sort();
    assert!(
        unnamed.is_empty(),
        "README.md's Layout does not name: {unnamed:?}"
    );
}
