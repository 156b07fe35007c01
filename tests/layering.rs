//! The crate's layers, in the order data flows: every `crate::…` path in
//! `src/` names a module of a lower layer, or the module itself. An import
//! that goes up a layer (or sideways, to another module of the same layer)
//! fails this test, naming the file and the import. The table is the one
//! ARCHITECTURE.md describes; a new module must be placed in it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// (layer, modules): a module may use only modules of lower layers.
const LAYERS: &[(u32, &[&str])] = &[
    (0, &["identity", "proto", "disk", "pattern"]),
    (1, &["config"]),
    // Trust: the bundle, rustls configurations, the live trust state.
    (2, &["trust"]),
    (3, &["bulletin", "pki"]),
    (4, &["policy", "filter", "metrics", "tokens"]),
    // The log: it knows bulletins, not their forms (what a span is, it is told).
    (5, &["store"]),
    // One admission path into the log; one view of it for each reader.
    (6, &["ingest", "view"]),
    // The forms of a bulletin: STIX, MISP, documents.
    (7, &["stix", "misp", "document"]),
    // Subscriptions out of the log; the network edge: dialling and accepting.
    (8, &["broker", "client", "net"]),
    (9, &["federation"]),
    (10, &["state"]),
    // The gRPC API (services, translations, statuses) and the operations port.
    (11, &["api", "ops", "taxii"]),
    (12, &["node"]),
    (13, &["dev", "bench", "fuzzing"]),
    (14, &["cli", "main", "lib"]),
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

/// The top-level module a file belongs to: `src/store.rs` and
/// `src/store/anything.rs` are both `store`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel
        .components()
        .next()
        .expect("a component")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// The modules a text names as `crate::<module>` (comments included: a doc
/// link up a layer is a dependency of the reader's mind, too).
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let before = &rest[..i];
            rest = &rest[i + "crate::".len()..];
            // `beacon_crate::` or `some_crate::` are not this crate.
            if before.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                out.push((n + 1, ident));
            }
        }
    }
    out
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
        let module = module_of(&src, file);
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
                    "{}:{line}: `crate::{used}` is in no layer",
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
                    "{}:{line}: `{module}` (layer {own}) uses `crate::{used}` (layer {theirs}): \
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
    // The parser finds paths in uses, expressions and doc links, and ignores
    // other crates' paths that end in `crate::`.
    let text = "use crate::store::Store;\nlet x = crate::node::run;\n/// [`crate::api::convert::delivery`]\nuse other_crate::thing;";
    let found: Vec<String> = crate_paths(text).into_iter().map(|(_, m)| m).collect();
    assert_eq!(found, vec!["store", "node", "api"]);
    assert!(layer_of("store") < layer_of("broker"));
    assert!(layer_of("node") > layer_of("service"));
}

/// Every read asks policy through the reader's view: outside `src/view.rs`
/// no code checks a stored record's digest for serving (`.served(`) or asks
/// policy of a stored record (`may_read_meta(`), except the admission of a
/// relayed bulletin (`src/ingest.rs`, which asks whether the relaying peer
/// may hold it, on the way in).
#[test]
fn reads_ask_policy_only_through_the_view() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let allowed = |file: &Path, call: &str| {
        let rel = file.strip_prefix(&src).expect("under src");
        rel == Path::new("view.rs")
            || (call == "may_read_meta(" && rel == Path::new("policy.rs"))
            || (call == "may_read_meta(" && rel == Path::new("ingest.rs"))
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
