//! The conformance suite against both implementations: MemoryStore always, EtcdStore against
//! a real etcd (see `support` for where it comes from).

use std::sync::Arc;
use std::time::Duration;

use seqclust_meta::{MemoryStore, MetaStore, conformance};

mod support;

fn memory() -> Arc<dyn MetaStore> {
    Arc::new(MemoryStore::new("/seqclust-test/"))
}

macro_rules! memory_checks {
    ($($check:ident),* $(,)?) => {
        /// Each check on a fresh MemoryStore.
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    seqclust_meta::conformance::$check(super::memory()).await;
                }
            )*
        }
    };
}

memory_checks!(
    revisions,
    compare_and_swap,
    list_and_delete,
    watch,
    lease_expiry,
    revoke,
    election,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_run_all_on_one_store() {
    conformance::run_all(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_run_all() {
    let Some(etcd) = support::etcd_or_skip("etcd_run_all") else {
        return;
    };
    let store = etcd.store(Duration::from_secs(5), 3).await;
    eprintln!(
        "conformance suite against etcd at {} ({store:?})",
        etcd.endpoint()
    );
    let store = Arc::new(store);
    conformance::run_all(store.clone()).await;
    // leave nothing behind in a shared etcd (the suite's leases are already revoked)
    for kv in store.list("").await.expect("list what the suite left") {
        store.delete(&kv.key).await.expect("delete");
    }
    assert!(store.list("").await.expect("list").is_empty());
}
