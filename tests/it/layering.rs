//! The crate's layers, in the order data flows: every `crate::…` path in
//! `src/` names a module of a lower layer, or the module itself. An import
//! that goes up a layer (or sideways, to another module of the same layer)
//! fails this test, naming the file and the import. The table is the one
//! ARCHITECTURE.md describes; a new module must be placed in it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Folders that group modules of several layers: a module in one is named
/// by the folder and its file (`base/identity`); any other module by its
/// top-level name (`store`, `trust`).
const GROUPS: &[&str] = &[
    "base", "domain", "broker", "net", "interop", "node", "tools", "tlog",
];

/// (layer, modules): a module may use only modules of lower layers.
const LAYERS: &[(u32, &[&str])] = &[
    (
        0,
        &[
            "base/identity",
            "base/proto",
            "base/disk",
            "interop/pattern",
            "tlog/merkle",
            "domain/hpke",
        ],
    ),
    (1, &["base/config", "tlog/note"]),
    // Trust: the bundle, rustls configurations, the live trust state.
    (2, &["trust", "tlog/receipt"]),
    (3, &["domain/bulletin", "tools/pki"]),
    (
        4,
        &[
            "domain/policy",
            "domain/keys",
            "domain/filter",
            "domain/tokens",
            "base/metrics",
        ],
    ),
    // The log: it knows bulletins, not their forms (what a span is, it is told).
    (5, &["store", "domain/sealed"]),
    // One admission path into the log; one view of it for each reader.
    (6, &["broker/ingest", "broker/view"]),
    // The forms of a bulletin: STIX, MISP, documents.
    (7, &["interop/stix", "interop/misp", "interop/document"]),
    // Subscriptions out of the log; the network edge: dialling and accepting.
    (8, &["broker/subscription", "net/client", "net/edge"]),
    // The node's signed checkpoints of its log.
    (9, &["node/transparency", "node/evidence", "node/duty"]),
    (10, &["node/federation", "node/witness"]),
    (11, &["node/state"]),
    // The gRPC API, the TAXII server and the operations port.
    (12, &["api", "interop/taxii", "node/ops"]),
    (13, &["node/serve"]),
    (14, &["tools/dev", "tools/bench", "tools/fuzzing"]),
    (15, &["cli", "main", "lib"]),
];

fn layer_of(module: &str) -> Option<u32> {
    LAYERS
        .iter()
        .find(|(_, ms)| ms.contains(&module))
        .map(|(l, _)| *l)
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a path's segments name: `store` for `store::x::Y`,
/// `base/identity` for `base::identity::Y`; `None` for a group folder
/// alone or its `mod.rs` (a list of modules, which imports nothing).
fn module_named(segments: &[&str]) -> Option<String> {
    let first = *segments.first()?;
    if GROUPS.contains(&first) {
        let second = segments.get(1)?;
        if *second == "mod" {
            return None;
        }
        return Some(format!("{first}/{second}"));
    }
    Some(first.to_owned())
}

/// The module a file belongs to: `src/store/wal.rs` is `store`,
/// `src/base/identity.rs` is `base/identity`, `src/interop/taxii/view.rs`
/// is `interop/taxii`.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let parts: Vec<String> = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned()
        })
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    module_named(&parts)
}

/// The paths a text names after `crate::` (comments included: a doc link
/// up a layer is a dependency of the reader's mind, too), as (line,
/// segments), with grouped imports read item by item: `crate::{a::b, c}`
/// names `a::b` and `c`.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = text[at..].find("crate::") {
        let start = at + i;
        at = start + "crate::".len();
        // `beacon_crate::` or `some_crate::` are not this crate.
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue;
        }
        let line = text[..start].matches('\n').count() + 1;
        for path in paths_at(&text[at..]) {
            let segments: Vec<&str> = path.split("::").collect();
            if let Some(m) = module_named(&segments) {
                out.push((line, m));
            }
        }
    }
    out
}

/// The paths at the start of `rest` (just after `crate::`): one path, or
/// each item of a brace group, nested groups included.
fn paths_at(rest: &str) -> Vec<String> {
    let ident = |s: &str| -> usize {
        s.find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let mut out = Vec::new();
    let mut prefix = String::new();
    let mut s = rest;
    loop {
        let n = ident(s);
        if n == 0 {
            break;
        }
        if !prefix.is_empty() {
            prefix.push_str("::");
        }
        prefix.push_str(&s[..n]);
        s = &s[n..];
        match s.strip_prefix("::") {
            Some(r) => s = r,
            None => {
                out.push(prefix);
                return out;
            }
        }
    }
    if let Some(group) = s.strip_prefix('{') {
        // Split the group's items at its top-level commas.
        let mut depth = 0;
        let mut item_start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    push_items(&prefix, &group[item_start..i], &mut out);
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    push_items(&prefix, &group[item_start..i], &mut out);
                    item_start = i + 1;
                }
                _ => {}
            }
        }
    } else if !prefix.is_empty() {
        out.push(prefix);
    }
    out
}

fn push_items(prefix: &str, item: &str, out: &mut Vec<String>) {
    let item = item.trim();
    if item.is_empty() || item == "self" || item.starts_with("self ") {
        if !prefix.is_empty() {
            out.push(prefix.to_owned());
        }
        return;
    }
    for p in paths_at(item) {
        out.push(if prefix.is_empty() {
            p
        } else {
            format!("{prefix}::{p}")
        });
    }
}

#[test]
fn every_import_goes_down_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut graph: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(own) = layer_of(&module) else {
            violations.push(format!(
                "{}: module `{module}` is in no layer (add it to LAYERS and ARCHITECTURE.md)",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        for (line, used) in crate_paths(&text) {
            if used == module {
                continue;
            }
            let Some(theirs) = layer_of(&used) else {
                // `crate::VERSION` and other items of lib.rs itself.
                if used.chars().next().is_some_and(|c| c.is_uppercase()) {
                    continue;
                }
                violations.push(format!(
                    "{}:{line}: `{used}` is in no layer",
                    file.display()
                ));
                continue;
            };
            graph
                .entry(module.clone())
                .or_default()
                .insert(used.clone());
            if theirs >= own {
                violations.push(format!(
                    "{}:{line}: `{module}` (layer {own}) uses `{used}` (layer {theirs}): \
                     an import may only go down a layer",
                    file.display()
                ));
            }
        }
    }
    for (m, deps) in &graph {
        eprintln!(
            "{m} -> {}",
            deps.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    assert!(
        violations.is_empty(),
        "imports against the layering:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_an_upward_import() {
    // The parser finds paths in uses, expressions and doc links, grouped
    // imports item by item, and ignores other crates' paths that end in
    // `crate::`.
    let text = "use crate::store::Store;\nlet x = crate::node::serve::run;\n/// [`crate::api::convert::delivery`]\nuse other_crate::thing;\nuse crate::{base::identity::Identity, domain::{bulletin, policy::Policy}, trust};";
    let found: Vec<String> = crate_paths(text).into_iter().map(|(_, m)| m).collect();
    assert_eq!(
        found,
        vec![
            "store",
            "node/serve",
            "api",
            "base/identity",
            "domain/bulletin",
            "domain/policy",
            "trust"
        ]
    );
    assert_eq!(crate_paths(text)[4].0, 5, "line numbers");
    // Every module in the table exists as a file, and every file is in it.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: std::collections::BTreeSet<String> =
        files.iter().filter_map(|f| module_of(&src, f)).collect();
    for (_, ms) in LAYERS {
        for m in *ms {
            assert!(modules.contains(*m), "LAYERS names `{m}`, which no file is");
        }
    }
    assert!(layer_of("store") < layer_of("broker/subscription"));
    assert!(layer_of("node/serve") > layer_of("node/state"));
}

/// Every read asks policy through the reader's view: outside
/// `src/broker/view.rs` no code checks a stored record's digest for serving
/// (`.served(`) or asks policy of a stored record (`may_read_meta(`), except
/// the admission of a relayed bulletin (`src/broker/ingest.rs`, which asks
/// whether the relaying peer may hold it, on the way in).
#[test]
fn reads_ask_policy_only_through_the_view() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let allowed = |file: &Path, call: &str| {
        let rel = file.strip_prefix(&src).expect("under src");
        rel == Path::new("broker/view.rs")
            || (call == "may_read_meta(" && rel == Path::new("domain/policy.rs"))
            || (call == "may_read_meta(" && rel == Path::new("broker/ingest.rs"))
    };
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        for (n, line) in text.lines().enumerate() {
            for call in [".served(", "may_read_meta("] {
                if line.contains(call) && !allowed(file, call) {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "reads that ask policy or check digests outside the view:\n{}",
        found.join("\n")
    );
}
