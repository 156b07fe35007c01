//! Work one node of a log does at a time (the store's [`Duty`]): started
//! when this node takes the duty, stopped and awaited when it loses it,
//! started again when it takes it back. On a store only this node opens it
//! holds every duty from the start, so this is just the work run until
//! shutdown.

use std::future::Future;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::store::Duty;

/// Runs `work` while this node holds `duty` (`held` follows it), until
/// `shutdown`. `work` is given a token cancelled when the duty is lost or
/// the node shuts down, and is awaited before the duty is waited for again,
/// so this node never runs two of it.
pub async fn while_held<F, Fut>(
    duty: Duty,
    mut held: watch::Receiver<bool>,
    shutdown: CancellationToken,
    work: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Whether the holder can still tell a change (else what it last said
    // stays true for good).
    let mut live = true;
    loop {
        while !*held.borrow_and_update() {
            if !live {
                shutdown.cancelled().await;
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = held.changed() => live = r.is_ok(),
            }
        }
        info!(duty = duty.name(), "this node does the duty");
        let token = shutdown.child_token();
        let mut task = tokio::spawn(work(token.clone()));
        let mut finished = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = &mut task, if !finished => finished = true,
                r = held.changed(), if live => match r {
                    Ok(()) => if !*held.borrow_and_update() { break },
                    Err(_) => live = false,
                },
            }
            if !live && finished {
                // Done, and holding it for good: nothing more to do.
                shutdown.cancelled().await;
                return;
            }
        }
        token.cancel();
        if !finished {
            let _ = task.await;
        }
        if shutdown.is_cancelled() {
            return;
        }
        info!(
            duty = duty.name(),
            "this node stopped the duty; another node of the log may do it now"
        );
    }
}
