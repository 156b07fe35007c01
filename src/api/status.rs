//! The one mapping of module errors to gRPC statuses.

use tonic::Status;

use crate::base::identity::RoleKind;
use crate::domain::bulletin::BulletinError;
use crate::store::StoreError;

pub fn no_peer() -> Status {
    Status::unauthenticated("no verified client certificate on this connection")
}

pub fn wrong_role(who: &str, allowed: &[RoleKind]) -> Status {
    let allowed: Vec<String> = allowed.iter().map(|k| k.to_string()).collect();
    Status::permission_denied(format!(
        "{who} may not call this; allowed: {}",
        allowed.join(", ")
    ))
}

pub fn bulletin(e: &BulletinError) -> Status {
    let msg = e.to_string();
    match e {
        BulletinError::TooLarge { .. } => Status::resource_exhausted(msg),
        BulletinError::Signer(_)
        | BulletinError::WrongMember { .. }
        | BulletinError::OperatorSigner(_)
        | BulletinError::NotPeer { .. } => Status::permission_denied(msg),
        BulletinError::Key(_) | BulletinError::Sign => Status::internal(msg),
        _ => Status::invalid_argument(msg),
    }
}

pub fn ingest(e: &crate::broker::ingest::IngestError) -> Status {
    use crate::broker::ingest::IngestError as I;
    match e {
        I::Bulletin(b) => bulletin(b),
        I::NotReadable { .. } | I::SubmittedBy(_) => Status::permission_denied(e.to_string()),
        I::Digest | I::NotCanonical | I::Origin(_) => Status::invalid_argument(e.to_string()),
        I::SignerExpired | I::MustBeSealed(_) => Status::failed_precondition(e.to_string()),
        I::Key(k) => keys(k),
        I::Sealed(s) => sealed(s),
    }
}

pub fn sealed(e: &crate::domain::sealed::SealError) -> Status {
    use crate::domain::sealed::SealError as S;
    match e {
        S::Signature(b) => bulletin(b),
        S::Hpke(_) | S::Commitment | S::Decrypt | S::NotARecipient(_) => {
            Status::failed_precondition(e.to_string())
        }
        _ => Status::invalid_argument(e.to_string()),
    }
}

pub fn keys(e: &crate::domain::keys::KeyError) -> Status {
    use crate::domain::keys::KeyError as K;
    let msg = e.to_string();
    match e {
        K::WrongSigner { .. } => Status::permission_denied(msg),
        K::Unknown { .. } | K::NotValid { .. } | K::Revoked { .. } => {
            Status::failed_precondition(msg)
        }
        K::Conflict { .. } => Status::already_exists(msg),
        K::TooMany { .. } => Status::resource_exhausted(msg),
        K::Io { .. } => Status::internal(msg),
        _ => Status::invalid_argument(msg),
    }
}

/// A backup that could not be written.
pub fn backup(e: &crate::store::backup::BackupError) -> Status {
    use crate::store::backup::BackupError;
    match e {
        BackupError::Store(s) => store(s),
        other => Status::internal(other.to_string()),
    }
}

pub fn store(e: &StoreError) -> Status {
    let msg = e.to_string();
    match e {
        StoreError::Conflict { .. } => Status::already_exists(msg),
        StoreError::MissingRelated { .. } | StoreError::Narrows { .. } => {
            Status::failed_precondition(msg)
        }
        StoreError::Corrupt { .. } | StoreError::RolledBack { .. } | StoreError::Torn(_) => {
            Status::data_loss(msg)
        }
        StoreError::Closed | StoreError::Failed(_) | StoreError::Unavailable(_) => {
            Status::unavailable(msg)
        }
        StoreError::DiskFull { .. } => Status::resource_exhausted(msg),
        StoreError::Io(_) | StoreError::NewerFormat { .. } | StoreError::NewerSchema { .. } => {
            Status::internal(msg)
        }
        StoreError::BeyondHead { .. } => Status::out_of_range(msg),
        StoreError::Proof(crate::tlog::merkle::ProofError::Missing { .. }) => {
            Status::data_loss(msg)
        }
        StoreError::Proof(_) => Status::invalid_argument(msg),
    }
}

pub fn transparency(e: &crate::node::transparency::TransparencyError) -> Status {
    use crate::node::transparency::TransparencyError as T;
    let msg = e.to_string();
    match e {
        T::Store(s) => store(s),
        T::Note(_) => Status::invalid_argument(msg),
        T::Refused(_) => Status::failed_precondition(msg),
        T::Io { .. } | T::Key { .. } | T::Sign(_) => Status::internal(msg),
    }
}

pub fn bad_request(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

pub fn broker(e: &crate::broker::subscription::BrokerError) -> Status {
    use crate::broker::subscription::BrokerError as B;
    let msg = e.to_string();
    match e {
        B::TakenOver(_) | B::Deleted(_) => Status::aborted(msg),
        B::ShuttingDown => Status::unavailable(msg),
        B::Store(s) => store(s),
        B::BadAck { .. } | B::Invalid(_) => Status::invalid_argument(msg),
        B::TooMany(_) => Status::resource_exhausted(msg),
    }
}

pub fn not_found(id: &str) -> Status {
    Status::not_found(format!("no bulletin {id}"))
}

/// A request message over the decode limit. tonic's decoder says
/// `OUT_OF_RANGE`; gRPC's convention for a message larger than the
/// maximum is `RESOURCE_EXHAUSTED`, and the message names the limit.
pub fn message_too_large(found: Option<u64>, limit: Option<u64>) -> Status {
    let size = match found {
        Some(n) => format!("a request message of {n} bytes"),
        None => "a request message".to_owned(),
    };
    let limit = match limit {
        Some(n) => format!("this node's limit of {n} bytes per message"),
        None => "this node's limit per message".to_owned(),
    };
    Status::resource_exhausted(format!(
        "{size} is over {limit} (limits.max_message_bytes; an envelope may be at most \
         limits.max_envelope_bytes)"
    ))
}

/// `status` as the client should see it: the decoder's "message too
/// large" becomes [`message_too_large`]; anything else is unchanged.
pub fn from_decoder(status: Status) -> Status {
    // tonic: "Error, decoded message length too large: found N bytes,
    // the limit is: M bytes".
    const MARK: &str = "decoded message length too large";
    let msg = status.message();
    if status.code() != tonic::Code::OutOfRange || !msg.contains(MARK) {
        return status;
    }
    let number_after = |label: &str| {
        msg.split(label)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    message_too_large(number_after("found "), number_after("limit is: "))
}

/// A stream on a connection the node is closing (its identity no longer
/// accepted): the reason, as the stream's last word.
pub fn closing(reason: &str) -> Status {
    Status::unauthenticated(reason.to_owned())
}
