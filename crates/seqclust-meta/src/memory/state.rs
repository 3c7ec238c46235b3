//! The data of a [`super::MemoryStore`] and the changes of it, under its lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::store::{KeyValue, LeaseId, Revision, WatchEvent};

pub(super) struct State {
    pub(super) revision: Revision,
    pub(super) next_lease: LeaseId,
    pub(super) kvs: BTreeMap<String, Entry>,
    pub(super) leases: HashMap<LeaseId, Lease>,
    pub(super) watchers: Vec<Watcher>,
    /// Candidates of each election in campaign order; the first one leads.
    pub(super) elections: HashMap<String, Vec<Candidate>>,
}

pub(super) struct Entry {
    pub(super) value: Vec<u8>,
    pub(super) mod_revision: Revision,
    pub(super) lease: Option<LeaseId>,
}

pub(super) struct Lease {
    pub(super) ttl: Duration,
    pub(super) deadline: Instant,
    pub(super) keys: BTreeSet<String>,
}

pub(super) struct Watcher {
    pub(super) prefix: String,
    pub(super) tx: mpsc::UnboundedSender<Result<WatchEvent>>,
}

pub(super) struct Candidate {
    pub(super) key: String,
    pub(super) value: String,
    pub(super) lease: LeaseId,
    pub(super) revision: Revision,
}

impl State {
    pub(super) fn new() -> Self {
        State {
            revision: 1, // like a fresh etcd: the first change gets revision 2
            next_lease: 0x5eed_0000,
            kvs: BTreeMap::new(),
            leases: HashMap::new(),
            watchers: Vec::new(),
            elections: HashMap::new(),
        }
    }

    /// Ends every lease whose deadline has passed; returns whether any ended.
    pub(super) fn expire(&mut self, now: Instant) -> bool {
        let expired: Vec<LeaseId> = (self.leases.iter())
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.end_lease(*id);
        }
        !expired.is_empty()
    }

    /// Removes the lease, its keys (all in one revision, as etcd does) and its candidacies.
    pub(super) fn end_lease(&mut self, id: LeaseId) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        if !lease.keys.is_empty() {
            self.revision += 1;
            for key in lease.keys {
                self.kvs.remove(&key);
                let mod_revision = self.revision;
                self.emit(WatchEvent::Delete { key, mod_revision });
            }
        }
        for queue in self.elections.values_mut() {
            queue.retain(|c| c.lease != id);
        }
        self.elections.retain(|_, queue| !queue.is_empty());
        true
    }

    pub(super) fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision> {
        if let Some(id) = lease.filter(|id| !self.leases.contains_key(id)) {
            return Err(Error::LeaseExpired { lease: id });
        }
        self.revision += 1;
        let entry = Entry {
            value,
            mod_revision: self.revision,
            lease,
        };
        let event = WatchEvent::Put(entry.to_key_value(key));
        if let Some(old) = self.kvs.insert(key.to_owned(), entry) {
            self.detach(key, old.lease);
        }
        if let Some(l) = lease.and_then(|id| self.leases.get_mut(&id)) {
            l.keys.insert(key.to_owned());
        }
        self.emit(event);
        Ok(self.revision)
    }

    pub(super) fn delete(&mut self, key: &str) -> bool {
        let Some(old) = self.kvs.remove(key) else {
            return false;
        };
        self.detach(key, old.lease);
        self.revision += 1;
        let mod_revision = self.revision;
        self.emit(WatchEvent::Delete {
            key: key.to_owned(),
            mod_revision,
        });
        true
    }

    pub(super) fn detach(&mut self, key: &str, lease: Option<LeaseId>) {
        if let Some(l) = lease.and_then(|id| self.leases.get_mut(&id)) {
            l.keys.remove(key);
        }
    }

    /// Sends the event to the watchers of its key and forgets the watchers that are gone.
    pub(super) fn emit(&mut self, event: WatchEvent) {
        self.watchers.retain(|w| {
            if w.tx.is_closed() {
                false
            } else if event.key().starts_with(&w.prefix) {
                w.tx.send(Ok(event.clone())).is_ok()
            } else {
                true
            }
        });
    }
}

impl Entry {
    pub(super) fn to_key_value(&self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: self.value.clone(),
            mod_revision: self.mod_revision,
            lease: self.lease,
        }
    }
}
