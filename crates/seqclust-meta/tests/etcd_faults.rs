//! EtcdStore when etcd misbehaves: unreachable, frozen (SIGSTOP), killed and restarted.

use std::time::{Duration, Instant};

use futures::StreamExt;
use seqclust_meta::{Error, EtcdConfig, EtcdStore, MetaStore, WatchEvent};

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_fails_within_the_deadline() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = EtcdConfig {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        timeout: Duration::from_millis(300),
        retries: 2,
        ..EtcdConfig::default()
    };
    let started = Instant::now();
    let error = EtcdStore::connect(config)
        .await
        .expect_err("nothing listens there");
    let took = started.elapsed();
    eprintln!(
        "after {took:?}: {error} ({:?})",
        std::error::Error::source(&error)
    );
    assert!(
        error.is_retryable(),
        "a refused connection is transient: {error:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "3 tries of 300 ms took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_etcd_times_out_then_recovers() {
    let Some(server) = support::spawned_or_skip("frozen_etcd_times_out_then_recovers") else {
        return;
    };
    let store = support::store_at(server.endpoint(), Duration::from_millis(500), 1).await;
    store.put("k", b"1".to_vec(), None).await.expect("put");
    server.freeze();
    let started = Instant::now();
    let frozen = store.get("k").await;
    let took = started.elapsed();
    server.thaw();
    assert!(
        matches!(frozen, Err(Error::Timeout { op: "get", .. })),
        "{frozen:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "2 tries of 500 ms took {took:?}"
    );
    let kv = store
        .get("k")
        .await
        .expect("get after thaw")
        .expect("k exists");
    assert_eq!(kv.value, b"1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_an_etcd_restart() {
    let Some(mut server) = support::spawned_or_skip("watch_survives_an_etcd_restart") else {
        return;
    };
    let store = support::store_at(server.endpoint(), Duration::from_secs(1), 8).await;
    let mut events = store.watch_prefix("w/").await.expect("watch");
    let r1 = store.put("w/a", b"1".to_vec(), None).await.expect("put a");
    let first = tokio::time::timeout(Duration::from_secs(10), events.next()).await;
    assert!(
        matches!(first, Ok(Some(Ok(WatchEvent::Put(ref kv)))) if kv.mod_revision == r1),
        "{first:?}"
    );

    server.kill();
    server.run();
    let r2 = store
        .put("w/b", b"2".to_vec(), None)
        .await
        .expect("put b after the restart");
    assert!(r2 > r1);
    let next = tokio::time::timeout(Duration::from_secs(20), events.next()).await;
    match next {
        Ok(Some(Ok(WatchEvent::Put(kv)))) => {
            assert_eq!((kv.key.as_str(), kv.mod_revision), ("w/b", r2))
        }
        other => panic!("expected the put of w/b after the restart, got {other:?}"),
    }
}
