//! The behaviour every [`MetaStore`] implementation must show, as one suite that the tests
//! run against each of them (feature `conformance`).
//!
//! Each check works under its own random key prefix and election name, so runs against a
//! shared etcd do not collide, and cleans up its leases. A failed check panics.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tokio::time::timeout;

use crate::error::Error;
use crate::store::{MetaStore, WatchEvent, WatchStream};

pub mod etcd_server;
mod leases;

pub use leases::{election, lease_expiry, revoke};

/// How long any single expected thing may take before the check fails.
pub(crate) const DEADLINE: Duration = Duration::from_secs(15);
/// How long a check waits to see that something does *not* happen (a blocked campaign).
pub(crate) const BLOCKED: Duration = Duration::from_millis(500);

/// Runs every check in turn.
pub async fn run_all(store: Arc<dyn MetaStore>) {
    revisions(store.clone()).await;
    compare_and_swap(store.clone()).await;
    list_and_delete(store.clone()).await;
    watch(store.clone()).await;
    lease_expiry(store.clone()).await;
    revoke(store.clone()).await;
    election(store).await;
}

/// A fresh key prefix (`conformance/<name>-<unique>/`).
pub fn unique_prefix(name: &str) -> String {
    format!("conformance/{}/", unique_name(name))
}

/// A fresh name without `/` (for elections).
pub fn unique_name(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{name}-{}-{nanos:x}-{n}", std::process::id())
}

pub(crate) async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match timeout(DEADLINE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {DEADLINE:?} waiting for {what}"),
    }
}

pub(crate) async fn next_event(events: &mut WatchStream, what: &str) -> WatchEvent {
    match within(what, events.next()).await {
        Some(Ok(event)) => event,
        other => panic!("watch ended while waiting for {what}: {other:?}"),
    }
}

/// Polls `condition` until it holds (bounded by [`DEADLINE`]).
pub(crate) async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

pub(crate) fn assert_lease_expired<T: std::fmt::Debug>(result: crate::Result<T>, what: &str) {
    assert!(
        matches!(result, Err(Error::LeaseExpired { .. })),
        "{what}: expected LeaseExpired, got {result:?}"
    );
}

/// Puts return increasing revisions; get returns what was put, with its revision.
pub async fn revisions(store: Arc<dyn MetaStore>) {
    let p = unique_prefix("revisions");
    let (a, b) = (format!("{p}a"), format!("{p}b"));
    assert_eq!(store.get(&format!("{p}missing")).await.expect("get"), None);
    let r1 = store.put(&a, b"1".to_vec(), None).await.expect("put a");
    let r2 = store.put(&b, b"2".to_vec(), None).await.expect("put b");
    let r3 = store
        .put(&a, b"3".to_vec(), None)
        .await
        .expect("put a again");
    assert!(
        r1 < r2 && r2 < r3,
        "revisions must increase: {r1} {r2} {r3}"
    );
    let kv = store.get(&a).await.expect("get a").expect("a exists");
    assert_eq!(
        (kv.key.as_str(), kv.value.as_slice()),
        (a.as_str(), &b"3"[..])
    );
    assert_eq!((kv.mod_revision, kv.lease), (r3, None));
    let kv = store.get(&b).await.expect("get b").expect("b exists");
    assert_eq!(kv.mod_revision, r2);
}

/// Compare-and-swap on absent and present keys, succeeding and failing.
pub async fn compare_and_swap(store: Arc<dyn MetaStore>) {
    let k = format!("{}k", unique_prefix("cas"));
    let cas = |expected, value: &[u8]| store.compare_and_swap(&k, expected, value.to_vec(), None);
    let r1 = cas(None, b"v1")
        .await
        .expect("cas create")
        .expect("absent key: created");
    assert_eq!(
        cas(None, b"x").await.expect("cas create again"),
        None,
        "key exists"
    );
    assert_eq!(
        cas(Some(r1 - 1), b"x").await.expect("cas stale"),
        None,
        "wrong revision"
    );
    assert_eq!(
        store.get(&k).await.expect("get").map(|kv| kv.value),
        Some(b"v1".to_vec())
    );
    let r2 = cas(Some(r1), b"v2")
        .await
        .expect("cas update")
        .expect("right revision");
    assert!(r2 > r1);
    let kv = store.get(&k).await.expect("get").expect("k exists");
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"v2"[..], r2));
    assert_eq!(cas(Some(r1), b"x").await.expect("cas old revision"), None);
    assert!(store.delete(&k).await.expect("delete"));
    assert_eq!(cas(Some(r2), b"x").await.expect("cas on deleted key"), None);
    let r3 = cas(None, b"v3")
        .await
        .expect("cas re-create")
        .expect("deleted key: created");
    assert!(r3 > r2);
}

/// List returns exactly the keys under the prefix, sorted; delete says whether a key existed.
pub async fn list_and_delete(store: Arc<dyn MetaStore>) {
    let p = unique_prefix("list");
    for key in ["list/b", "list/a", "listx", "lis", "list/c/d"] {
        store
            .put(&format!("{p}{key}"), key.as_bytes().to_vec(), None)
            .await
            .expect("put");
    }
    let listed = |sub: &'static str| {
        let (store, p) = (store.clone(), p.clone());
        async move {
            let kvs = store.list(&format!("{p}{sub}")).await.expect("list");
            let mut keys = Vec::new();
            for kv in kvs {
                let key = kv
                    .key
                    .strip_prefix(&p)
                    .expect("listed key under the prefix");
                assert_eq!(kv.value, key.as_bytes(), "the value put under {key}");
                let under = key
                    .strip_prefix(sub)
                    .expect("listed key under the sub-prefix");
                keys.push(under.to_owned());
            }
            keys
        }
    };
    assert_eq!(listed("list/").await, ["a", "b", "c/d"]);
    assert_eq!(
        listed("").await,
        ["lis", "list/a", "list/b", "list/c/d", "listx"]
    );
    assert!(listed("nothing/").await.is_empty());
    assert!(store.delete(&format!("{p}list/b")).await.expect("delete"));
    assert!(
        !store
            .delete(&format!("{p}list/b"))
            .await
            .expect("delete again")
    );
    assert!(
        !store
            .delete(&format!("{p}never"))
            .await
            .expect("delete missing")
    );
    assert_eq!(listed("list/").await, ["a", "c/d"]);
}

/// A watch sees the puts and deletes under its prefix, in order, and nothing from before it.
pub async fn watch(store: Arc<dyn MetaStore>) {
    let p = unique_prefix("watch");
    let key = |k: &str| format!("{p}w/{k}");
    store
        .put(&key("before"), b"0".to_vec(), None)
        .await
        .expect("put before");
    let mut events = store.watch_prefix(&format!("{p}w/")).await.expect("watch");
    let r1 = store
        .put(&key("a"), b"1".to_vec(), None)
        .await
        .expect("put a");
    store
        .put(&format!("{p}outside"), b"x".to_vec(), None)
        .await
        .expect("put outside");
    let r2 = store
        .put(&key("b"), b"2".to_vec(), None)
        .await
        .expect("put b");
    assert!(store.delete(&key("a")).await.expect("delete a"));
    let r4 = store
        .put(&key("c"), b"3".to_vec(), None)
        .await
        .expect("put c");

    let put = |name: &str, value: &[u8], rev| {
        let kv = crate::KeyValue {
            key: key(name),
            value: value.to_vec(),
            mod_revision: rev,
            lease: None,
        };
        WatchEvent::Put(kv)
    };
    assert_eq!(next_event(&mut events, "put a").await, put("a", b"1", r1));
    assert_eq!(next_event(&mut events, "put b").await, put("b", b"2", r2));
    match next_event(&mut events, "delete a").await {
        WatchEvent::Delete {
            key: k,
            mod_revision,
        } => {
            assert_eq!(k, key("a"));
            assert!(
                r2 < mod_revision && mod_revision < r4,
                "{r2} < {mod_revision} < {r4}"
            );
        }
        other => panic!("expected the delete of a, got {other:?}"),
    }
    assert_eq!(next_event(&mut events, "put c").await, put("c", b"3", r4));

    // A second watch starts after the current revision: no replay of the above.
    let mut later = store
        .watch_prefix(&format!("{p}w/"))
        .await
        .expect("second watch");
    let r5 = store
        .put(&key("d"), b"4".to_vec(), None)
        .await
        .expect("put d");
    assert_eq!(
        next_event(&mut later, "put d on the second watch").await,
        put("d", b"4", r5)
    );
    assert_eq!(
        next_event(&mut events, "put d on the first watch").await,
        put("d", b"4", r5)
    );
}
