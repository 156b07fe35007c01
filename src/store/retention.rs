//! Retention: which committed records are due to be pruned, found in
//! bounded steps.
//!
//! Two rules, each settable per TLP label (`[retention]` in `beacon.toml`):
//! - a bulletin with `expires_at` is due `after_expiry` after it expires
//!   (found through the expiry entries, earliest first);
//! - a bulletin without one is due `max_age` after it was accepted
//!   (acceptance times never go backwards along the log, so each label's
//!   rule walks the log once, from where it last stopped).
//!
//! Pruning itself is [`super::Store::prune`]: one atomic write by the
//! store's own writer per step, so a crash leaves each record either whole
//! or a tombstone.

use std::time::{Duration, SystemTime};

use super::record::nanos;
use super::{Store, StoreError};
use crate::base::config::RetentionConfig;
use crate::domain::bulletin::{codec, Tlp};

/// The retention rules, by TLP wire number.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Indexed by TLP wire number (1..=5; 0 unused).
    after_expiry: [Option<Duration>; 6],
    max_age: [Option<Duration>; 6],
    pub interval: Duration,
    pub batch: usize,
}

impl Retention {
    /// The rules of a `[retention]` section; an unknown TLP label is an error.
    pub fn from_config(c: &RetentionConfig) -> Result<Retention, String> {
        let mut r = Retention {
            after_expiry: [c.after_expiry; 6],
            max_age: [c.max_age; 6],
            interval: c.interval,
            batch: c.batch.max(1),
        };
        for (label, t) in &c.tlp {
            let tlp = Tlp::parse(label).ok_or_else(|| {
                format!("retention.tlp: unknown TLP label {label:?} (use TLP:CLEAR, TLP:GREEN, TLP:AMBER, TLP:AMBER+STRICT or TLP:RED)")
            })?;
            let i = wire(tlp);
            if let Some(a) = t.after_expiry {
                r.after_expiry[i] = a;
            }
            if let Some(m) = t.max_age {
                r.max_age[i] = m;
            }
        }
        Ok(r)
    }

    /// Whether any rule can ever prune anything.
    pub fn prunes(&self) -> bool {
        self.after_expiry.iter().any(Option::is_some) || self.max_age.iter().any(Option::is_some)
    }

    fn after_expiry(&self, tlp: u8) -> Option<Duration> {
        self.after_expiry.get(usize::from(tlp)).copied().flatten()
    }

    fn max_age(&self, tlp: u8) -> Option<Duration> {
        self.max_age.get(usize::from(tlp)).copied().flatten()
    }
}

fn wire(t: Tlp) -> usize {
    usize::try_from(codec::tlp_to_i32(t)).unwrap_or(0).min(5)
}

/// Where the search for due records stands between steps. Kept in memory:
/// after a restart the walks start again from the beginning of the log
/// (pruned records are no longer in it, so they cost nothing).
#[derive(Debug, Default)]
pub struct Pruner {
    /// Per TLP wire number: the last sequence the max-age walk examined.
    walked: [u64; 6],
}

impl Pruner {
    pub fn new() -> Pruner {
        Pruner::default()
    }

    /// Up to `rules.batch` committed records due at `now`, in increasing
    /// order. Empty when nothing is due.
    pub fn due(
        &mut self,
        store: &Store,
        rules: &Retention,
        now: SystemTime,
    ) -> Result<Vec<u64>, StoreError> {
        let limit = rules.batch;
        let mut due = self.expired(store, rules, now, limit)?;
        if due.len() < limit {
            self.aged(store, rules, now, limit - due.len(), &mut due)?;
        }
        due.sort_unstable();
        due.dedup();
        Ok(due)
    }

    /// Expired records whose `after_expiry` has passed. The entries are
    /// ordered by expiry; one whose label keeps it longer is passed over.
    fn expired(
        &self,
        store: &Store,
        rules: &Retention,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let shortest = rules.after_expiry.iter().flatten().min().copied();
        let Some(shortest) = shortest else {
            return Ok(Vec::new());
        };
        let Some(until) = now.checked_sub(shortest) else {
            return Ok(Vec::new());
        };
        let uniform = rules.after_expiry[1..].iter().all(|a| *a == Some(shortest));
        let mut due = Vec::new();
        let mut from = (0u64, 0u64);
        loop {
            let page = store.expiring(from, until, limit.max(256))?;
            let Some(&(at, seq)) = page.last() else {
                break;
            };
            let full = page.len() >= limit.max(256);
            // With one rule for every label, every entry is due; only
            // per-label rules need the records' labels (read here, in one
            // request, and again by the prune step).
            let labels: std::collections::HashMap<u64, u8> = match uniform {
                true => Default::default(),
                false => {
                    let seqs: Vec<u64> = page.iter().map(|(_, s)| *s).collect();
                    store
                        .get_many(&seqs)?
                        .into_iter()
                        .map(|r| (r.seq, r.meta.tlp))
                        .collect()
                }
            };
            for (expires, seq) in page {
                let keep = if uniform {
                    Some(shortest)
                } else {
                    match labels.get(&seq) {
                        Some(tlp) => rules.after_expiry(*tlp),
                        None => continue,
                    }
                };
                if keep.is_some_and(|keep| expires + keep <= now) {
                    due.push(seq);
                    if due.len() >= limit {
                        return Ok(due);
                    }
                }
            }
            if !full {
                break;
            }
            from = (nanos(at), seq.saturating_add(1));
        }
        Ok(due)
    }

    /// Records without `expires_at` older than their label's `max_age`.
    fn aged(
        &mut self,
        store: &Store,
        rules: &Retention,
        now: SystemTime,
        limit: usize,
        due: &mut Vec<u64>,
    ) -> Result<(), StoreError> {
        let head = store.head();
        let start = due.len();
        for tlp in 1..=5u8 {
            let Some(cutoff) = rules.max_age(tlp).and_then(|m| now.checked_sub(m)) else {
                continue;
            };
            let walked = &mut self.walked[usize::from(tlp)];
            // Bounded work per step: a stretch of the log, then the next step.
            let to = head.min(walked.saturating_add(16 * limit as u64));
            let mut last = to;
            for item in store.range(walked.saturating_add(1), to) {
                let rec = item?;
                if rec.accepted_at > cutoff {
                    // Everything after was accepted later still.
                    last = rec.seq - 1;
                    break;
                }
                if rec.meta.tlp == tlp && rec.meta.expires_at.is_none() {
                    due.push(rec.seq);
                    if due.len() - start >= limit {
                        last = rec.seq;
                        break;
                    }
                }
            }
            *walked = last.max(*walked);
            if due.len() - start >= limit {
                break;
            }
        }
        Ok(())
    }
}

/// Prunes what is due, every `rules.interval`, until `shutdown`: one
/// bounded step (at most `rules.batch` records, one atomic write) at a
/// time, each found on the blocking pool. A failure is logged and the next
/// interval tries again.
pub async fn run(
    store: std::sync::Arc<Store>,
    rules: Retention,
    shutdown: tokio_util::sync::CancellationToken,
) {
    if !rules.prunes() {
        return;
    }
    let mut pruner = Pruner::new();
    // Retention works in the background: after each step it rests. While
    // the node is busy (bulletins appended or served since the last step)
    // it rests `BUSY_REST` times as long as the step took, so it takes about
    // 1/(1+BUSY_REST) of the writer and of a core and publishers and
    // readers keep their speed; on an idle node, as long as the step took.
    // Measured: `beacon bench retention`.
    const BUSY_REST: u32 = 19;
    let activity = |s: &Store| {
        use std::sync::atomic::Ordering::Relaxed;
        s.stats.appended.load(Relaxed) + s.stats.served.load(Relaxed)
    };
    let mut seen = activity(&store);
    let mut tick = tokio::time::interval(rules.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        loop {
            if store.backups_running() {
                break; // a backup reads a fixed view; prune after it
            }
            let step = std::time::Instant::now();
            let (s, r) = (store.clone(), rules.clone());
            let found = tokio::task::spawn_blocking(move || {
                let due = pruner.due(&s, &r, SystemTime::now());
                // What the step prunes, by label, for the log line.
                let labels = due
                    .as_ref()
                    .map(|seqs| labels_of(&s, seqs))
                    .unwrap_or_default();
                (pruner, due, labels)
            })
            .await;
            let (due, labels) = match found {
                Ok((p, due, labels)) => {
                    pruner = p;
                    (due, labels)
                }
                Err(_) => return,
            };
            let seqs = match due {
                Ok(seqs) if seqs.is_empty() => break,
                Ok(seqs) => seqs,
                Err(e) => {
                    tracing::warn!(error = %e, "retention: finding what is due failed");
                    break;
                }
            };
            let (first, last) = (
                seqs.first().copied().unwrap_or(0),
                seqs.last().copied().unwrap_or(0),
            );
            match store.prune(seqs).await {
                Ok(n) => {
                    store
                        .stats
                        .pruned
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    // Every step is said: pruning removes bulletins (TLP:RED
                    // ones too) for good.
                    tracing::info!(target: "beacon::audit", pruned = n, labels = %labels,
                                   first, last, "retention: pruned bulletins");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention: pruning failed");
                    break;
                }
            }
            let now = activity(&store);
            let rest = if now != seen { BUSY_REST } else { 1 };
            seen = now;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(step.elapsed() * rest) => {}
            }
        }
    }
}

/// "TLP:RED 2, TLP:GREEN 10": how many of `seqs` carry each label (in
/// TLP order, most restricted first).
fn labels_of(store: &Store, seqs: &[u64]) -> String {
    let mut counts = [0u64; 6];
    for rec in store.get_many(seqs).unwrap_or_default() {
        if let Some(c) = counts.get_mut(usize::from(rec.meta.tlp)) {
            *c += 1;
        }
    }
    let mut parts: Vec<(usize, String)> = Tlp::ALL
        .iter()
        .filter_map(|t| {
            let n = counts.get(wire(*t)).copied().unwrap_or(0);
            (n > 0).then(|| (wire(*t), format!("{} {n}", t.label())))
        })
        .collect();
    parts.sort_by_key(|(w, _)| std::cmp::Reverse(*w));
    parts
        .into_iter()
        .map(|(_, p)| p)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::config::TlpRetention;

    #[test]
    fn per_label_rules_replace_the_defaults() {
        let mut c = RetentionConfig::default();
        c.tlp.insert(
            "TLP:RED".into(),
            TlpRetention {
                after_expiry: Some(None),
                max_age: Some(Some(Duration::from_secs(60))),
            },
        );
        let r = Retention::from_config(&c).unwrap();
        let red = wire(Tlp::Red) as u8;
        let green = wire(Tlp::Green) as u8;
        assert_eq!(r.after_expiry(red), None);
        assert_eq!(r.max_age(red), Some(Duration::from_secs(60)));
        assert_eq!(r.after_expiry(green), c.after_expiry);
        assert_eq!(r.max_age(green), None);
        assert!(r.prunes());
        c.tlp.insert("TLP:PURPLE".into(), TlpRetention::default());
        assert!(Retention::from_config(&c)
            .unwrap_err()
            .contains("TLP:PURPLE"));
    }
}
