//! What one reader may see of the log: the only way the node's read paths
//! (Get, List, Subscribe replay and live, relays to peer nodes, TAXII and
//! the MISP feed) get a record to serve.
//!
//! A [`Seen`] is made here and nowhere else, and only for a record that
//! passed, in this order: policy (the reader's member may read its TLP and
//! audience), the reader's filter, its choices on expired and replaced
//! bulletins, and the check of the envelope against its digest. The API's
//! deliveries and TAXII's objects are built from a `Seen`, so "every read
//! asks policy" holds by construction, not by each handler remembering to.

use std::sync::Arc;
use std::time::SystemTime;

use crate::domain::filter::Filter;
use crate::domain::policy::Policy;
use crate::store::{Record, Replacement, Store, StoreError};

/// The log as one member reads it.
#[derive(Clone)]
pub struct View {
    store: Arc<Store>,
    policy: Policy,
    member: String,
    filter: Filter,
    /// Bulletins past their `expires_at` are shown (marked expired).
    show_expired: bool,
    /// Bulletins superseded or retracted are passed over.
    current_only: bool,
    /// Every sealed bulletin is for this reader (a node that carries them
    /// for others; it cannot open them).
    carry_sealed: bool,
}

/// A record this view's reader may have, checked, with what replaced it (as
/// the log stood when it was read).
#[derive(Debug)]
pub struct Seen {
    record: Record,
    replaced_by: Option<Replacement>,
    expired: bool,
}

impl Seen {
    pub fn record(&self) -> &Record {
        &self.record
    }

    pub fn replaced_by(&self) -> Option<&Replacement> {
        self.replaced_by.as_ref()
    }

    pub fn into_parts(self) -> (Record, Option<Replacement>, bool) {
        (self.record, self.replaced_by, self.expired)
    }
}

/// One sequence of a scan. (Not boxed: a scan yields one per record on the
/// replay path, and the record is moved once, into a batch.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Step {
    /// A record for this reader.
    Seen(Seen),
    /// A record that is not (policy, filter, expiry, replacement).
    Passed(u64),
}

/// One sequence looked up.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Found {
    Seen(Seen),
    /// Held, and not for this reader.
    Hidden,
    /// Not held (never, pruned, or beyond the committed head).
    Absent,
}

impl View {
    /// Everything `member` may read: expired and replaced bulletins
    /// included (marked), no filter.
    pub fn new(store: Arc<Store>, policy: Policy, member: impl Into<String>) -> View {
        View {
            store,
            policy,
            member: member.into(),
            filter: Filter::default(),
            show_expired: true,
            current_only: false,
            carry_sealed: false,
        }
    }

    /// Every sealed bulletin too, whatever its recipients (for a node that
    /// carries them: `[federation] carry_sealed = "any"`).
    pub fn carrying_sealed(mut self, carry: bool) -> View {
        self.carry_sealed = carry;
        self
    }

    /// Only what matches `filter`.
    pub fn filtered(mut self, filter: Filter) -> View {
        self.filter = filter;
        self
    }

    /// A reader's choices, as `List` and `Subscribe` take them:
    /// `current_only` passes over what was superseded, retracted or has
    /// expired; otherwise expired bulletins are shown with `include_expired`.
    pub fn choosing(mut self, include_expired: bool, current_only: bool) -> View {
        self.show_expired = include_expired && !current_only;
        self.current_only = current_only;
        self
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Policy, the filter and expiry: whether `rec` may be for this reader
    /// (its replacement is looked at after).
    fn admits(&self, rec: &Record, expired: bool) -> bool {
        (self.policy.may_read_meta(&self.member, &rec.meta)
            || (self.carry_sealed && crate::domain::sealed::is_sealed(&rec.envelope)))
            && self.filter.matches(&rec.meta)
            && (self.show_expired || !expired)
    }

    /// The record at `seq`, as this reader may have it.
    pub fn at(&self, seq: u64) -> Result<Found, StoreError> {
        let Some(rec) = self.store.get(seq)? else {
            return Ok(Found::Absent);
        };
        let expired = rec.meta.expired(SystemTime::now());
        if !self.admits(&rec, expired) {
            return Ok(Found::Hidden);
        }
        let replaced_by = self.store.replacement_of(seq)?;
        if self.current_only && replaced_by.is_some() {
            return Ok(Found::Hidden);
        }
        let record = self.store.served(rec)?;
        Ok(Found::Seen(Seen {
            record,
            replaced_by,
            expired,
        }))
    }

    /// The first of `seqs` this reader may have (a `Get` by id).
    pub fn first_of(
        &self,
        seqs: impl IntoIterator<Item = u64>,
    ) -> Result<Option<Seen>, StoreError> {
        for seq in seqs {
            if let Found::Seen(s) = self.at(seq)? {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// The records `from..=to` in order, each one [`Step::Seen`] or
    /// [`Step::Passed`]. A record that cannot be read or fails its digest
    /// is an error item; the scan goes on after it (the caller decides
    /// whether to). Pruned sequences are not in it.
    pub fn scan(
        &self,
        from: u64,
        to: u64,
    ) -> Result<impl Iterator<Item = Result<Step, StoreError>> + Send + '_, StoreError> {
        // The few replaced records of the range, in one ordered scan.
        let mut replaced = self.store.replacements(from, to)?;
        let now = SystemTime::now();
        Ok(self.store.range(from, to).map(move |item| {
            let rec = item?;
            let seq = rec.seq;
            let expired = rec.meta.expired(now);
            if !self.admits(&rec, expired) {
                return Ok(Step::Passed(seq));
            }
            let replaced_by = match replaced.next(seq) {
                Some(s) => self.store.replacement(s)?,
                None => None,
            };
            if self.current_only && replaced_by.is_some() {
                return Ok(Step::Passed(seq));
            }
            let record = self.store.served(rec)?;
            Ok(Step::Seen(Seen {
                record,
                replaced_by,
                expired,
            }))
        }))
    }
}

/// One page of a scan, in sequence order.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The last sequence the page covers (what comes after starts the next).
    pub last: u64,
}

impl View {
    /// A page of what this reader may have after `after`, up to `until`:
    /// at most `limit` items, at most `budget` sequences examined (so one
    /// call's work is bounded whatever it finds). `take` makes an item of a
    /// record, or says the page is full without it (`None`): that record
    /// then starts the next page.
    pub fn page<T>(
        &self,
        after: u64,
        until: u64,
        limit: usize,
        budget: u64,
        mut take: impl FnMut(Seen) -> Option<T>,
    ) -> Result<Page<T>, StoreError> {
        let from = after.saturating_add(1);
        let mut page = Page {
            items: Vec::new(),
            last: after,
        };
        if from > until || limit == 0 {
            return Ok(page);
        }
        let stop = until.min(from.saturating_add(budget.max(1) - 1));
        for step in self.scan(from, stop)? {
            match step? {
                Step::Passed(seq) => page.last = seq,
                Step::Seen(seen) => {
                    let seq = seen.record().seq;
                    match take(seen) {
                        Some(item) => page.items.push(item),
                        None => return Ok(page),
                    }
                    page.last = seq;
                    if page.items.len() >= limit {
                        return Ok(page);
                    }
                }
            }
        }
        // Pruned records at the end of the range are not in it.
        page.last = page.last.max(stop);
        Ok(page)
    }
}
