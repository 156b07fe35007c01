//! Every example config in the repository parses.

use std::path::Path;

fn toml_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            toml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
}

#[test]
fn every_example_config_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["deploy", "certs", "examples"] {
        toml_files(&root.join(dir), &mut files);
    }
    assert!(!files.is_empty(), "no example configs found");
    for f in files {
        beacon::config::Config::load(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}
