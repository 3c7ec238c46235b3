//! The [`MetaStore`] trait and the types it speaks in.

use std::time::Duration;

use futures::stream::BoxStream;

use crate::error::{Error, Result};

/// A store revision, with etcd's `mod_revision` semantics: every change of the store gets the
/// next revision of one store-wide, monotonically increasing counter, and a key's
/// `mod_revision` is the revision of its last change.
pub type Revision = i64;

/// Identifies a lease granted by [`MetaStore::grant_lease`].
pub type LeaseId = i64;

/// A key with its value, as read from the store. Keys are relative to the store's prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyValue {
    /// The key, without the store's prefix.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// The revision of the key's last change.
    pub mod_revision: Revision,
    /// The lease the key is attached to; the key is deleted when the lease ends.
    pub lease: Option<LeaseId>,
}

/// A change of a watched key.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// The key was created or overwritten.
    Put(KeyValue),
    /// The key was deleted, explicitly or because its lease ended.
    Delete {
        /// The key, without the store's prefix.
        key: String,
        /// The revision of the deletion.
        mod_revision: Revision,
    },
}

impl WatchEvent {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn mod_revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// The events of a watch, in revision order. It ends (or yields an error) only when the
/// watch cannot continue; dropping it cancels the watch.
pub type WatchStream = BoxStream<'static, Result<WatchEvent>>;

/// Proof of leadership returned by [`MetaStore::campaign`]; pass it to
/// [`MetaStore::resign`]. Only meaningful to the store that issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    pub(crate) election: String,
    pub(crate) key: String,
    pub(crate) lease: LeaseId,
    pub(crate) revision: Revision,
}

impl LeaderKey {
    /// The election this key leads.
    pub fn election(&self) -> &str {
        &self.election
    }

    /// The lease the leadership is tied to: when it ends, so does the leadership.
    pub fn lease(&self) -> LeaseId {
        self.lease
    }
}

/// The metadata store of the distributed runtime: a small, strongly consistent key-value store
/// with revisions, compare-and-swap, prefix watches, leases and leader election, as etcd
/// offers them. Implementations: [`crate::EtcdStore`] and [`crate::MemoryStore`]; both pass
/// the suite in [`crate::conformance`] (feature `conformance`).
///
/// Keys are relative to the prefix the store was constructed with. Leases have whole-second
/// TTLs (rounded up, at least one second), as in etcd.
#[async_trait::async_trait]
pub trait MetaStore: Send + Sync + std::fmt::Debug {
    /// The key's current value, if it exists.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Unconditional put; returns the new mod_revision. With a lease, the key is deleted when
    /// the lease ends; [`Error::LeaseExpired`] if the lease does not exist.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision>;

    /// Compare-and-swap: `expected = None` means "the key must not exist"; `Some(rev)` means
    /// its mod_revision must equal `rev`. `Ok(Some(new_rev))` on success, `Ok(None)` when the
    /// comparison failed.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>>;

    /// Deletes the key; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// All keys under the prefix, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>>;

    /// Events for keys under the prefix after the current revision (puts, deletes, and deletes
    /// caused by lease expiry). Every change made after this returns is delivered.
    async fn watch_prefix(&self, prefix: &str) -> Result<WatchStream>;

    /// Grants a lease that ends `ttl` after it was granted or last renewed.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;

    /// One renewal; `Err(Error::LeaseExpired{..})` if the lease is gone.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;

    /// Deletes the lease and every key attached to it. Revoking a lease that has already ended
    /// is not an error.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;

    /// Blocks until `candidate` (a value, e.g. the coordinator's address) leads `election`;
    /// the leadership is tied to `lease`. Candidates lead in the order they campaigned; a
    /// leader that resigns or whose lease ends is replaced by the next. Dropping the future
    /// withdraws the candidacy. [`Error::LeaseExpired`] if the lease ends while waiting.
    async fn campaign(&self, election: &str, candidate: &str, lease: LeaseId) -> Result<LeaderKey>;

    /// The current leader's value, if any.
    async fn leader(&self, election: &str) -> Result<Option<String>>;

    /// Gives up the leadership (or candidacy) of `leader`; nothing happens if it already ended.
    async fn resign(&self, leader: &LeaderKey) -> Result<()>;
}

/// The TTL in whole seconds that both implementations grant for `ttl`: rounded up, at least 1.
pub(crate) fn ttl_seconds(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// Checks an election name: non-empty, without `/` (election keys are `<name>/<lease>`).
pub(crate) fn check_election_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.contains('/') {
        "must not contain '/'"
    } else {
        return Ok(());
    };
    Err(Error::InvalidArgument {
        what: "election name",
        value: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::ZERO), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(200)), 1);
        assert_eq!(ttl_seconds(Duration::from_secs(2)), 2);
        assert_eq!(ttl_seconds(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn election_names_are_checked() {
        assert!(check_election_name("coordinator").is_ok());
        assert!(check_election_name("").is_err());
        assert!(check_election_name("a/b").is_err());
    }
}
