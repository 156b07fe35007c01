//! Who is on the other end: SPIFFE IDs parsed into typed identities.
//!
//! This is the one place where a certificate's URI SAN becomes an identity.
//! Accepted forms (see `shared` domain notes, "Identity: SPIFFE-style URI SANs"):
//!
//! ```text
//! spiffe://<trust-domain>/node/<member>/<node>
//! spiffe://<trust-domain>/client/<member>/<name>
//! spiffe://<trust-domain>/operator/<name>
//! ```
//!
//! Everything else is refused with a reason that says what was wrong.

use std::fmt;
use std::str::FromStr;

/// Longest SPIFFE ID we accept (the SPIFFE spec's limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain (a DNS name's limit).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Longest member id, node, client or operator name.
pub const MAX_NAME_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("identity is empty")]
    Empty,
    #[error("identity is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    #[error("identity must start with spiffe://")]
    NotSpiffe,
    #[error("identity must not carry a query or fragment")]
    QueryOrFragment,
    #[error("invalid trust domain {0:?}: use lower-case letters, digits, '.', '-' and '_'")]
    TrustDomain(String),
    #[error("invalid path segment {0:?}: use letters, digits, '.', '-' and '_', not '.' or '..'")]
    Segment(String),
    #[error("invalid member id {0:?}: use dot-separated lower-case labels of letters, digits and '-', like \"uk.ncsc\"")]
    Member(String),
    #[error("invalid name {0:?}: use 1-{MAX_NAME_LEN} letters, digits, '.', '-' or '_'")]
    Name(String),
    #[error("unknown identity path {0:?}: expected node/<member>/<node>, client/<member>/<name> or operator/<name>")]
    Path(String),
    #[error("invalid member pattern {0:?}: use \"*\", a member id, or a prefix like \"uk.*\"")]
    Pattern(String),
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// A SPIFFE trust domain, e.g. `alliance.example`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= MAX_TRUST_DOMAIN_LEN
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            })
            && !s.starts_with('.')
            && !s.ends_with('.')
            && !s.contains("..");
        if ok {
            Ok(TrustDomain(s.to_owned()))
        } else {
            Err(IdentityError::TrustDomain(s.to_owned()))
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An allied organisation, e.g. `uk.ncsc` or `drc`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(String);

impl MemberId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for MemberId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if s.len() <= MAX_NAME_LEN && !s.is_empty() && s.split('.').all(label_ok) {
            Ok(MemberId(s.to_owned()))
        } else {
            Err(IdentityError::Member(s.to_owned()))
        }
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A node, client or operator name: one SPIFFE path segment of bounded length.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() <= MAX_NAME_LEN && valid_segment(s) {
            Ok(Name(s.to_owned()))
        } else {
            Err(IdentityError::Name(s.to_owned()))
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an identity may do follows from its role.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A member's daemon; serves TLS and connects to peers.
    Node { member: MemberId, node: Name },
    /// A member's program (analyst tool, pipeline).
    Client { member: MemberId, name: Name },
    /// A person who runs a CA and the nodes; belongs to no member.
    Operator { name: Name },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoleKind {
    Node,
    Client,
    Operator,
}

impl fmt::Display for RoleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RoleKind::Node => "node",
            RoleKind::Client => "client",
            RoleKind::Operator => "operator",
        })
    }
}

/// A parsed SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: TrustDomain,
    pub role: Role,
}

impl Identity {
    pub fn node(trust_domain: TrustDomain, member: MemberId, node: Name) -> Self {
        Identity {
            trust_domain,
            role: Role::Node { member, node },
        }
    }

    pub fn client(trust_domain: TrustDomain, member: MemberId, name: Name) -> Self {
        Identity {
            trust_domain,
            role: Role::Client { member, name },
        }
    }

    pub fn operator(trust_domain: TrustDomain, name: Name) -> Self {
        Identity {
            trust_domain,
            role: Role::Operator { name },
        }
    }

    /// The member this identity acts for; operators belong to none.
    pub fn member(&self) -> Option<&MemberId> {
        match &self.role {
            Role::Node { member, .. } | Role::Client { member, .. } => Some(member),
            Role::Operator { .. } => None,
        }
    }

    pub fn kind(&self) -> RoleKind {
        match self.role {
            Role::Node { .. } => RoleKind::Node,
            Role::Client { .. } => RoleKind::Client,
            Role::Operator { .. } => RoleKind::Operator,
        }
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(IdentityError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdentityError::TooLong);
        }
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or(IdentityError::NotSpiffe)?;
        if rest.contains('?') || rest.contains('#') {
            return Err(IdentityError::QueryOrFragment);
        }
        let (td, path) = match rest.split_once('/') {
            Some((td, path)) => (td, path),
            None => (rest, ""),
        };
        let trust_domain: TrustDomain = td.parse()?;
        let segments: Vec<&str> = path.split('/').collect();
        if let Some(bad) = segments.iter().find(|seg| !valid_segment(seg)) {
            return Err(IdentityError::Segment((*bad).to_owned()));
        }
        let role = match segments.as_slice() {
            ["node", member, node] => Role::Node {
                member: member.parse()?,
                node: node.parse()?,
            },
            ["client", member, name] => Role::Client {
                member: member.parse()?,
                name: name.parse()?,
            },
            ["operator", name] => Role::Operator {
                name: name.parse()?,
            },
            _ => return Err(IdentityError::Path(path.to_owned())),
        };
        Ok(Identity { trust_domain, role })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.role {
            Role::Node { member, node } => {
                write!(f, "spiffe://{}/node/{}/{}", self.trust_domain, member, node)
            }
            Role::Client { member, name } => {
                write!(
                    f,
                    "spiffe://{}/client/{}/{}",
                    self.trust_domain, member, name
                )
            }
            Role::Operator { name } => {
                write!(f, "spiffe://{}/operator/{}", self.trust_domain, name)
            }
        }
    }
}

/// Which members a CA may vouch for: `*`, an exact member id, or a prefix `uk.*`
/// (which matches `uk.ncsc` and `uk.ncsc.ops` but not `uk` itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MemberPattern {
    Any,
    Exact(MemberId),
    Prefix(MemberId),
}

impl MemberPattern {
    pub fn matches(&self, member: &MemberId) -> bool {
        match self {
            MemberPattern::Any => true,
            MemberPattern::Exact(m) => m == member,
            MemberPattern::Prefix(p) => member
                .as_str()
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1),
        }
    }
}

impl FromStr for MemberPattern {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "*" {
            return Ok(MemberPattern::Any);
        }
        if let Some(prefix) = s.strip_suffix(".*") {
            return prefix
                .parse()
                .map(MemberPattern::Prefix)
                .map_err(|_| IdentityError::Pattern(s.to_owned()));
        }
        s.parse()
            .map(MemberPattern::Exact)
            .map_err(|_| IdentityError::Pattern(s.to_owned()))
    }
}

impl fmt::Display for MemberPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemberPattern::Any => f.write_str("*"),
            MemberPattern::Exact(m) => write!(f, "{m}"),
            MemberPattern::Prefix(p) => write!(f, "{p}.*"),
        }
    }
}

/// A set of patterns; an empty set vouches for nobody, `["*"]` for everybody.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberScope(pub Vec<MemberPattern>);

impl MemberScope {
    pub fn any() -> Self {
        MemberScope(vec![MemberPattern::Any])
    }

    pub fn allows(&self, member: &MemberId) -> bool {
        self.0.iter().any(|p| p.matches(member))
    }

    pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Self, IdentityError> {
        items
            .iter()
            .map(|s| s.as_ref().parse())
            .collect::<Result<Vec<_>, _>>()
            .map(MemberScope)
    }
}

impl fmt::Display for MemberScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|p| p.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in [
            "spiffe://alliance.example/node/uk.ncsc/london-1",
            "spiffe://alliance.example/client/us.cisa/soc_pipeline",
            "spiffe://alliance.example/operator/alice",
            "spiffe://drc/node/drc/hub.1",
        ] {
            let id: Identity = s.parse().unwrap();
            assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn prefix_pattern() {
        let p: MemberPattern = "uk.*".parse().unwrap();
        assert!(p.matches(&"uk.ncsc".parse().unwrap()));
        assert!(p.matches(&"uk.ncsc.ops".parse().unwrap()));
        assert!(!p.matches(&"uk".parse().unwrap()));
        assert!(!p.matches(&"ukraine.cert".parse().unwrap()));
        assert!(!p.matches(&"us.cisa".parse().unwrap()));
    }
}
