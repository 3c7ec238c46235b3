//! [`MemoryStore`]: the in-process metadata store, the embedded default.

mod state;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::store::{
    KeyValue, LeaderKey, LeaseId, MetaStore, Revision, WatchStream, check_election_name,
    ttl_seconds,
};
use state::{Candidate, Lease, State, Watcher};

/// How often the background ticker ends expired leases (so that watchers and waiting
/// candidates see expiry without anyone calling the store).
const EXPIRY_TICK: Duration = Duration::from_millis(50);

/// An in-process [`MetaStore`] with etcd's semantics: one store-wide revision counter, leases
/// that really expire (checked on every call and by a background ticker), prefix watches and
/// elections where the earliest candidate leads.
///
/// Clones share the same store. Its prefix names the namespace (as [`crate::EtcdStore`]'s
/// does), but since nothing else shares the memory, keys are kept relative to it.
#[derive(Clone)]
pub struct MemoryStore {
    prefix: String,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Woken whenever an election queue may have changed.
    elections_changed: Notify,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

impl MemoryStore {
    /// An empty store for the namespace `prefix` (e.g. `"/seqclust/"`).
    pub fn new(prefix: impl Into<String>) -> Self {
        let state = State::new();
        MemoryStore {
            prefix: prefix.into(),
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                elections_changed: Notify::new(),
                ticker: Mutex::new(None),
            }),
        }
    }

    /// The namespace the store was created for.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The state, after ending the leases that have expired.
    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.expired_state()
    }

    /// Starts the expiry ticker on the current tokio runtime unless one is running (without a
    /// runtime, leases still expire on every call, and watchers see it then).
    fn ensure_ticker(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut ticker = self
            .shared
            .ticker
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if ticker.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        *ticker = Some(runtime.spawn(async move {
            loop {
                tokio::time::sleep(EXPIRY_TICK).await;
                match weak.upgrade() {
                    Some(shared) => drop(shared.expired_state()),
                    None => return, // the store is gone
                }
            }
        }));
    }
}

impl Shared {
    fn expired_state(&self) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.expire(Instant::now()) {
            self.elections_changed.notify_waiters();
        }
        state
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("MemoryStore")
            .field("prefix", &self.prefix)
            .field("revision", &state.revision)
            .field("keys", &state.kvs.len())
            .field("leases", &state.leases.len())
            .finish_non_exhaustive()
    }
}

/// Withdraws a candidacy when a campaign ends without leading (its future was dropped).
struct Withdraw<'a> {
    shared: &'a Shared,
    election: &'a str,
    key: String,
    armed: bool,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut state = self.shared.expired_state();
            if let Some(queue) = state.elections.get_mut(self.election) {
                queue.retain(|c| c.key != self.key);
            }
            state.elections.retain(|_, queue| !queue.is_empty());
            drop(state);
            self.shared.elections_changed.notify_waiters();
        }
    }
}

#[async_trait::async_trait]
impl MetaStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.state().kvs.get(key).map(|e| e.to_key_value(key)))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        self.state().put(key, value, lease)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>> {
        let mut state = self.state();
        let current = state.kvs.get(key).map(|e| e.mod_revision);
        if current != expected {
            return Ok(None);
        }
        state.put(key, value, lease).map(Some)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.state().delete(key))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let state = self.state();
        let under = state.kvs.range(prefix.to_owned()..);
        Ok(under
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| e.to_key_value(k))
            .collect())
    }

    async fn watch_prefix(&self, prefix: &str) -> Result<WatchStream> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.state().watchers.push(Watcher {
            prefix: prefix.to_owned(),
            tx,
        });
        let events = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|event| (event, rx))
        });
        Ok(events.boxed())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        self.ensure_ticker();
        let ttl = Duration::from_secs(ttl_seconds(ttl).unsigned_abs());
        let mut state = self.state();
        state.next_lease += 1;
        let id = state.next_lease;
        let lease = Lease {
            ttl,
            deadline: Instant::now() + ttl,
            keys: BTreeSet::new(),
        };
        state.leases.insert(id, lease);
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut state = self.state();
        let l = state
            .leases
            .get_mut(&lease)
            .ok_or(Error::LeaseExpired { lease })?;
        l.deadline = Instant::now() + l.ttl;
        Ok(())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        if self.state().end_lease(lease) {
            self.shared.elections_changed.notify_waiters();
        }
        Ok(())
    }

    async fn campaign(&self, election: &str, candidate: &str, lease: LeaseId) -> Result<LeaderKey> {
        check_election_name(election)?;
        let key = format!("{election}/{lease:016x}");
        let revision = {
            let mut guard = self.state();
            let state = &mut *guard;
            if !state.leases.contains_key(&lease) {
                return Err(Error::LeaseExpired { lease });
            }
            let queue = state.elections.entry(election.to_owned()).or_default();
            if let Some(c) = queue.iter_mut().find(|c| c.key == key) {
                c.value = candidate.to_owned(); // campaigning again with the same lease
                c.revision
            } else {
                state.revision += 1;
                queue.push(Candidate {
                    key: key.clone(),
                    value: candidate.to_owned(),
                    lease,
                    revision: state.revision,
                });
                state.revision
            }
        };
        let mut withdraw = Withdraw {
            shared: &self.shared,
            election,
            key,
            armed: true,
        };
        loop {
            let changed = self.shared.elections_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable(); // before looking, so no change is missed
            {
                let state = self.state();
                let queue = state.elections.get(election);
                match queue.and_then(|q| q.iter().position(|c| c.key == withdraw.key)) {
                    None => return Err(Error::LeaseExpired { lease }),
                    Some(0) => {
                        withdraw.armed = false;
                        return Ok(LeaderKey {
                            election: election.to_owned(),
                            key: withdraw.key.clone(),
                            lease,
                            revision,
                        });
                    }
                    Some(_) => {}
                }
            }
            changed.await;
        }
    }

    async fn leader(&self, election: &str) -> Result<Option<String>> {
        check_election_name(election)?;
        let state = self.state();
        let first = state.elections.get(election).and_then(|q| q.first());
        Ok(first.map(|c| c.value.clone()))
    }

    async fn resign(&self, leader: &LeaderKey) -> Result<()> {
        let mut state = self.state();
        if let Some(queue) = state.elections.get_mut(&leader.election) {
            queue.retain(|c| !(c.key == leader.key && c.revision == leader.revision));
        }
        state.elections.retain(|_, queue| !queue.is_empty());
        drop(state);
        self.shared.elections_changed.notify_waiters();
        Ok(())
    }
}
