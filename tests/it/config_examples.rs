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
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("client") {
            let s = beacon::net::client::ClientSettings::from_file(&f)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(s.node.is_some() && s.cert.is_some() && !s.ca.is_empty());
        } else {
            beacon::base::config::Config::load(&f)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        }
    }
}

/// Every YAML file under deploy/ (compose, Kubernetes, Prometheus, Grafana)
/// is well-formed, and each document says what it is.
#[test]
fn every_deployment_manifest_is_well_formed_yaml() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    assert!(
        files.len() >= 4,
        "expected compose and Kubernetes manifests"
    );
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: serde_yaml_ng::Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let m = v
                .as_mapping()
                .unwrap_or_else(|| panic!("{}: not a mapping", f.display()));
            // Kubernetes objects, compose files, Prometheus's scrape
            // config, Grafana's provisioning.
            let known = [
                "kind",
                "services",
                "scrape_configs",
                "datasources",
                "providers",
            ]
            .iter()
            .any(|k| m.contains_key(serde_yaml_ng::Value::from(*k)));
            assert!(
                known,
                "{}: not a Kubernetes object, compose file, scrape config or Grafana provisioning",
                f.display()
            );
        }
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}
