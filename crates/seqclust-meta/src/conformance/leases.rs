//! Leases and elections: expiry, renewal, revocation, leadership order.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, timeout};

use super::{
    BLOCKED, assert_lease_expired, eventually, next_event, unique_name, unique_prefix, within,
};
use crate::error::Error;
use crate::keep_alive::spawn_keep_alive;
use crate::store::{MetaStore, WatchEvent};

/// A key on a lease that is not renewed disappears after the TTL (and watchers see the
/// delete), while renewals keep a key on another lease alive; a lost lease refuses renewals
/// and new keys.
pub async fn lease_expiry(store: Arc<dyn MetaStore>) {
    let p = unique_prefix("expiry");
    let (short_key, kept_key) = (format!("{p}short"), format!("{p}kept"));
    let mut events = store.watch_prefix(&p).await.expect("watch");
    let granted = Instant::now();
    let short = store
        .grant_lease(Duration::from_secs(1))
        .await
        .expect("grant short");
    let kept = store
        .grant_lease(Duration::from_secs(1))
        .await
        .expect("grant kept");
    assert_ne!(short, kept);
    store
        .put(&short_key, b"s".to_vec(), Some(short))
        .await
        .expect("put short");
    store
        .put(&kept_key, b"k".to_vec(), Some(kept))
        .await
        .expect("put kept");
    let kv = store
        .get(&short_key)
        .await
        .expect("get")
        .expect("short exists");
    assert_eq!(kv.lease, Some(short));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let keeper = spawn_keep_alive(store.clone(), kept, Duration::from_millis(250), stopped);

    eventually("the unrenewed key to expire", || async {
        store.get(&short_key).await.expect("get short").is_none()
    })
    .await;
    let expired_after = granted.elapsed();
    for want in [&short_key, &kept_key] {
        let event = next_event(&mut events, "a put").await;
        assert!(
            matches!(&event, WatchEvent::Put(kv) if &kv.key == want),
            "{event:?}"
        );
    }
    let event = next_event(&mut events, "the expiry delete").await;
    assert!(
        matches!(&event, WatchEvent::Delete { key, .. } if key == &short_key),
        "{event:?}"
    );

    // Unrenewed, `kept` would have expired about when `short` did: give it as long again.
    tokio::time::sleep(expired_after).await;
    let kv = store.get(&kept_key).await.expect("get kept");
    assert!(
        kv.is_some(),
        "the renewed key expired (short expired after {expired_after:?})"
    );

    assert_lease_expired(
        store.keep_alive(short).await,
        "keep_alive of an expired lease",
    );
    let put = store
        .put(&format!("{p}late"), b"x".to_vec(), Some(short))
        .await;
    assert_lease_expired(put, "put on an expired lease");
    let late = format!("{p}late");
    let cas = store
        .compare_and_swap(&late, None, b"x".to_vec(), Some(short))
        .await;
    assert_lease_expired(cas, "compare_and_swap on an expired lease");

    stop.send(true).expect("keeper is running");
    let ended = within("the keep-alive task to stop", keeper).await;
    assert!(matches!(ended, Ok(Ok(()))), "keep-alive task: {ended:?}");
    store.revoke_lease(kept).await.expect("revoke kept");
    assert_eq!(store.get(&kept_key).await.expect("get kept"), None);
}

/// Revoking a lease deletes exactly its keys, in one revision; the lease is gone after.
pub async fn revoke(store: Arc<dyn MetaStore>) {
    let p = unique_prefix("revoke");
    let lease = store
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    for k in ["a", "b"] {
        store
            .put(&format!("{p}{k}"), b"l".to_vec(), Some(lease))
            .await
            .expect("put on lease");
    }
    store
        .put(&format!("{p}c"), b"free".to_vec(), None)
        .await
        .expect("put free");
    let mut events = store.watch_prefix(&p).await.expect("watch");
    store.revoke_lease(lease).await.expect("revoke");
    let listed = store.list(&p).await.expect("list");
    assert_eq!(
        listed.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
        [format!("{p}c")]
    );

    let mut deleted = BTreeSet::new();
    let mut revisions = BTreeSet::new();
    for _ in 0..2 {
        match next_event(&mut events, "a revoke delete").await {
            WatchEvent::Delete { key, mod_revision } => {
                deleted.insert(key);
                revisions.insert(mod_revision);
            }
            other => panic!("expected a delete, got {other:?}"),
        }
    }
    assert_eq!(deleted, BTreeSet::from([format!("{p}a"), format!("{p}b")]));
    assert_eq!(
        revisions.len(),
        1,
        "one revision for the whole revoke: {revisions:?}"
    );

    store
        .revoke_lease(lease)
        .await
        .expect("revoking again is not an error");
    assert_lease_expired(
        store.keep_alive(lease).await,
        "keep_alive of a revoked lease",
    );
    let campaign = store.campaign(&unique_name("revoked"), "x", lease).await;
    assert_lease_expired(campaign, "campaign with a revoked lease");
}

/// The first campaigner leads; the next one waits until the leader resigns or its lease is
/// revoked; a dropped campaign withdraws; `leader()` reports the value.
pub async fn election(store: Arc<dyn MetaStore>) {
    let e = unique_name("election");
    let bad = store.campaign("a/b", "x", 0).await;
    assert!(matches!(bad, Err(Error::InvalidArgument { .. })), "{bad:?}");
    let grant = || store.grant_lease(Duration::from_secs(60));
    let (la, lb) = (grant().await.expect("grant"), grant().await.expect("grant"));
    let (lc, ld) = (grant().await.expect("grant"), grant().await.expect("grant"));
    assert_eq!(store.leader(&e).await.expect("leader"), None);

    let a = within("the first campaign", store.campaign(&e, "a", la))
        .await
        .expect("campaign a");
    assert_eq!((a.election(), a.lease()), (e.as_str(), la));
    assert_eq!(
        store.leader(&e).await.expect("leader").as_deref(),
        Some("a")
    );

    let spawn_campaign = |value: &'static str, lease| {
        let (store, e) = (store.clone(), e.clone());
        tokio::spawn(async move { store.campaign(&e, value, lease).await })
    };
    let mut b = spawn_campaign("b", lb);
    assert!(
        timeout(BLOCKED, &mut b).await.is_err(),
        "b must wait while a leads"
    );
    assert_eq!(
        store.leader(&e).await.expect("leader").as_deref(),
        Some("a")
    );

    store.resign(&a).await.expect("resign a");
    let b = within("b to lead after a resigned", b)
        .await
        .expect("join")
        .expect("campaign b");
    assert_eq!(
        store.leader(&e).await.expect("leader").as_deref(),
        Some("b")
    );

    let mut c = spawn_campaign("c", lc);
    assert!(
        timeout(BLOCKED, &mut c).await.is_err(),
        "c must wait while b leads"
    );
    store
        .revoke_lease(b.lease())
        .await
        .expect("revoke b's lease");
    let c = within("c to lead after b's lease ended", c)
        .await
        .expect("join")
        .expect("campaign c");
    assert_eq!(
        store.leader(&e).await.expect("leader").as_deref(),
        Some("c")
    );

    let dropped = timeout(BLOCKED, store.campaign(&e, "d", ld)).await;
    assert!(dropped.is_err(), "d must wait while c leads");
    store.resign(&c).await.expect("resign c");
    store
        .resign(&c)
        .await
        .expect("resigning twice is not an error");
    eventually("no leader once c resigned and d withdrew", || async {
        store.leader(&e).await.expect("leader").is_none()
    })
    .await;

    for lease in [la, lc, ld] {
        store.revoke_lease(lease).await.expect("revoke");
    }
}
