//! A background task that keeps a lease alive.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::store::{LeaseId, MetaStore};

/// How many renewal periods of failed renewals [`spawn_keep_alive`] tolerates before it gives
/// up. With the usual `every = ttl / 3` this is about the lease's TTL, after which the lease
/// has most likely ended on the server anyway.
pub const KEEP_ALIVE_FAILED_PERIODS: u32 = 3;

/// Renews `lease` every `every` until `shutdown` turns `true` (or its sender is dropped),
/// which ends the task with `Ok(())`.
///
/// The task ends with the error when the lease is lost ([`Error::LeaseExpired`]), on an error
/// that is not retryable, or when retryable errors (an unreachable etcd) have kept the lease
/// from being renewed for [`KEEP_ALIVE_FAILED_PERIODS`] periods. An owner whose leadership or
/// registration hangs on the lease should treat any error as having lost it.
pub fn spawn_keep_alive(
    store: Arc<dyn MetaStore>,
    lease: LeaseId,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let give_up_after = every.saturating_mul(KEEP_ALIVE_FAILED_PERIODS);
        let mut last_renewal = Instant::now();
        loop {
            if *shutdown.borrow_and_update() {
                return Ok(());
            }
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return Ok(()); // the sender is gone: the owner shut down
                    }
                    continue;
                }
                () = tokio::time::sleep(every) => {}
            }
            match store.keep_alive(lease).await {
                Ok(()) => last_renewal = Instant::now(),
                Err(error) if error.is_retryable() && last_renewal.elapsed() < give_up_after => {
                    tracing::warn!(lease, %error, "lease renewal failed; trying again");
                }
                Err(error) => {
                    log_loss(lease, &error);
                    return Err(error);
                }
            }
        }
    })
}

fn log_loss(lease: LeaseId, error: &Error) {
    match error {
        Error::LeaseExpired { .. } => tracing::warn!(lease, "lease lost"),
        _ => tracing::warn!(lease, %error, "giving up renewing the lease"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[tokio::test]
    async fn ends_ok_on_shutdown_and_with_the_error_when_the_lease_is_lost() {
        let store: Arc<dyn MetaStore> = Arc::new(MemoryStore::new("/t/"));
        let every = Duration::from_millis(20);

        let lease = store.grant_lease(Duration::from_secs(1)).await.unwrap();
        let (stop, stopped) = watch::channel(false);
        let task = spawn_keep_alive(store.clone(), lease, every, stopped);
        stop.send(true).unwrap();
        assert!(matches!(task.await, Ok(Ok(()))));

        let (stop, stopped) = watch::channel(false);
        let task = spawn_keep_alive(store.clone(), lease, every, stopped);
        drop(stop); // a dropped sender is a shutdown too
        assert!(matches!(task.await, Ok(Ok(()))));

        let (_stop, stopped) = watch::channel(false);
        let task = spawn_keep_alive(store.clone(), lease, every, stopped);
        store.revoke_lease(lease).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap();
        assert!(matches!(ended, Ok(Err(Error::LeaseExpired { lease: l })) if l == lease));
    }
}
