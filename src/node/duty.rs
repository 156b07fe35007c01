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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Waits (bounded) until `f` holds.
    async fn until(f: impl Fn() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition never held");
    }

    #[tokio::test]
    async fn work_runs_only_while_the_duty_is_held_and_never_twice() {
        let (tx, rx) = watch::channel(false);
        let shutdown = CancellationToken::new();
        // How many runs are under way now, and how many began.
        let running = Arc::new(AtomicI32::new(0));
        let began = Arc::new(AtomicU32::new(0));
        let task = {
            let (running, began) = (running.clone(), began.clone());
            tokio::spawn(while_held(
                Duty::PeerLinks,
                rx,
                shutdown.clone(),
                move |token| {
                    let (running, began) = (running.clone(), began.clone());
                    async move {
                        assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0, "never two");
                        began.fetch_add(1, Ordering::SeqCst);
                        token.cancelled().await;
                        running.fetch_sub(1, Ordering::SeqCst);
                    }
                },
            ))
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(began.load(Ordering::SeqCst), 0, "not held: not started");
        tx.send_replace(true);
        until(|| running.load(Ordering::SeqCst) == 1).await;
        tx.send_replace(false);
        until(|| running.load(Ordering::SeqCst) == 0).await;
        // Taken back: started again, once.
        tx.send_replace(true);
        until(|| began.load(Ordering::SeqCst) == 2).await;
        assert_eq!(running.load(Ordering::SeqCst), 1);
        shutdown.cancel();
        task.await.expect("ends at shutdown");
        assert_eq!(running.load(Ordering::SeqCst), 0, "stopped at shutdown");
    }

    #[tokio::test]
    async fn a_duty_held_for_good_runs_its_work_until_shutdown() {
        // The embedded engine's answer: true, and no change ever.
        let rx = watch::channel(true).1;
        let shutdown = CancellationToken::new();
        let began = Arc::new(AtomicU32::new(0));
        let task = {
            let began = began.clone();
            tokio::spawn(while_held(
                Duty::Pruning,
                rx,
                shutdown.clone(),
                move |token| {
                    let began = began.clone();
                    async move {
                        began.fetch_add(1, Ordering::SeqCst);
                        token.cancelled().await;
                    }
                },
            ))
        };
        until(|| began.load(Ordering::SeqCst) == 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished());
        shutdown.cancel();
        task.await.expect("ends at shutdown");
        assert_eq!(began.load(Ordering::SeqCst), 1);
    }
}
