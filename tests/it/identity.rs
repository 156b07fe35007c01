//! Identity parsing: round trips, a table of hostile inputs, and properties
//! over arbitrary strings (never a panic, never accepting what the grammar forbids).

use beacon::base::identity::{Identity, MemberId, MemberPattern, Role, RoleKind};
use proptest::prelude::*;

#[test]
fn hostile_inputs_are_refused_with_a_reason() {
    let long = format!("spiffe://td/client/uk.ncsc/{}", "a".repeat(65));
    let huge = format!("spiffe://td/{}", "a/".repeat(2000));
    let cases: &[&str] = &[
        "",
        "spiffe://",
        "spiffe:///node/uk.ncsc/n1",
        "SPIFFE://td/node/uk.ncsc/n1",
        "spiffe://TD/node/uk.ncsc/n1",
        "https://td/node/uk.ncsc/n1",
        "spiffe://td",
        "spiffe://td/",
        "spiffe://td/node",
        "spiffe://td/node/uk.ncsc",
        "spiffe://td/node/uk.ncsc/n1/extra",
        "spiffe://td/node/uk.ncsc/n1/",
        "spiffe://td/node//n1",
        "spiffe://td/node/uk.ncsc/.",
        "spiffe://td/node/uk.ncsc/..",
        "spiffe://td/node/../n1",
        "spiffe://td/node/uk.ncsc/%2e%2e",
        "spiffe://td/node/uk.ncsc/n1?admin=1",
        "spiffe://td/node/uk.ncsc/n1#frag",
        "spiffe://td/node/UK.NCSC/n1",
        "spiffe://td/node/uk..ncsc/n1",
        "spiffe://td/node/.uk/n1",
        "spiffe://td/node/uk-/n1",
        "spiffe://td/node/uk_ncsc/n1",
        "spiffe://td/node/uk.ncsc/n 1",
        "spiffe://td/node/uk.ncsc/n1\0",
        "spiffe://td/node/uk.ncsc/ñ",
        "spiffe://td:443/node/uk.ncsc/n1",
        "spiffe://user@td/node/uk.ncsc/n1",
        "spiffe://td./node/uk.ncsc/n1",
        "spiffe://td/operator/uk.ncsc/alice",
        "spiffe://td/operator",
        "spiffe://td/admin/alice",
        "spiffe://td/Node/uk.ncsc/n1",
        " spiffe://td/node/uk.ncsc/n1",
        &long,
        &huge,
    ];
    for case in cases {
        let r = case.parse::<Identity>();
        assert!(r.is_err(), "accepted hostile identity {case:?}");
        assert!(!r.unwrap_err().to_string().is_empty());
    }
}

#[test]
fn good_inputs_parse_to_the_right_roles() {
    let id: Identity = "spiffe://alliance.example/node/uk.ncsc/london-1"
        .parse()
        .unwrap();
    assert_eq!(id.kind(), RoleKind::Node);
    assert_eq!(id.member().unwrap().as_str(), "uk.ncsc");
    let id: Identity = "spiffe://alliance.example/client/drc/Analyst_7"
        .parse()
        .unwrap();
    assert!(matches!(id.role, Role::Client { .. }));
    let id: Identity = "spiffe://alliance.example/operator/alice".parse().unwrap();
    assert_eq!(id.member(), None);
}

#[test]
fn member_patterns() {
    let m = |s: &str| s.parse::<MemberId>().unwrap();
    let p = |s: &str| s.parse::<MemberPattern>().unwrap();
    assert!(p("*").matches(&m("drc")));
    assert!(p("drc").matches(&m("drc")));
    assert!(!p("drc").matches(&m("drc.x")));
    assert!(p("uk.*").matches(&m("uk.ncsc")));
    assert!(!p("uk.*").matches(&m("uk")));
    assert!(!p("uk.*").matches(&m("ukx.ncsc")));
    for bad in ["", "**", "uk.**", "*.uk", "UK", "uk.", ".*"] {
        assert!(bad.parse::<MemberPattern>().is_err(), "{bad:?}");
    }
}

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?"
}

fn member() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..4).prop_map(|l| l.join("."))
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-][A-Za-z0-9._-]{0,20}".prop_filter("not . or ..", |s| s != "." && s != "..")
}

fn trust_domain() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..4).prop_map(|l| l.join("."))
}

proptest! {
    #[test]
    fn valid_identities_round_trip(td in trust_domain(), m in member(), n in name(), kind in 0u8..3) {
        let s = match kind {
            0 => format!("spiffe://{td}/node/{m}/{n}"),
            1 => format!("spiffe://{td}/client/{m}/{n}"),
            _ => format!("spiffe://{td}/operator/{n}"),
        };
        prop_assume!(s.len() <= beacon::base::identity::MAX_SPIFFE_ID_LEN);
        let id: Identity = s.parse().map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
        prop_assert_eq!(id.to_string(), s);
    }

    #[test]
    fn arbitrary_strings_never_panic_and_accepted_ones_are_canonical(s in ".{0,120}") {
        if let Ok(id) = s.parse::<Identity>() {
            // Whatever is accepted prints back to exactly the input: there is one
            // spelling of each identity, so comparisons cannot be fooled.
            prop_assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn mutated_identities_never_panic(td in trust_domain(), m in member(), n in name(),
                                      pos in 0usize..60, byte in any::<u8>()) {
        let mut bytes = format!("spiffe://{td}/client/{m}/{n}").into_bytes();
        let i = pos % bytes.len();
        bytes[i] = byte;
        if let Ok(s) = String::from_utf8(bytes) {
            if let Ok(id) = s.parse::<Identity>() {
                prop_assert_eq!(id.to_string(), s);
            }
        }
    }
}
