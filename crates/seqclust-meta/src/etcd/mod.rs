//! [`EtcdStore`]: the [`MetaStore`] on an etcd v3 cluster.
//!
//! Every request has a deadline ([`EtcdConfig::timeout`]) and transient failures are tried
//! again with exponential backoff ([`EtcdConfig::retries`]); other errors return at once.

mod config;
mod election;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};

pub use config::EtcdConfig;

use crate::error::{Error, Result};
use crate::store::{
    KeyValue, LeaderKey, LeaseId, MetaStore, Revision, WatchStream, check_election_name,
    ttl_seconds,
};

/// The [`MetaStore`] on etcd. Keys live at `<prefix>kv/<key>`, election candidates at
/// `<prefix>election/<name>/<lease in hex>`. Clones share one connection.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    client: Client,
    config: EtcdConfig,
    /// `<prefix>kv/`
    kv_root: String,
    /// `<prefix>election/`
    election_root: String,
}

impl EtcdStore {
    /// Connects to etcd (and logs in, with a user name) and checks that it answers.
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        config.validate()?;
        // No per-request timeout here: tonic would send it as the gRPC deadline, which also
        // ends the long-lived watch streams; `with_retries` puts the deadline on each request.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.timeout)
            // a silently dead connection (frozen or partitioned member) fails the open
            // streams (watches) instead of leaving them hanging
            .with_keep_alive(config.timeout.max(Duration::from_secs(1)), config.timeout);
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            // tokens of etcd's auth expire: log in again when one has
            options = options
                .with_user(user, password)
                .with_auto_token_refresh(true);
        }
        if let Some(ca) = &config.ca {
            options = options.with_tls(tls_options(&config, ca)?);
        }
        let endpoints = config.endpoints.join(",");
        let client = with_retries(&config, "connect", &endpoints, || {
            Client::connect(config.endpoints.clone(), Some(options.clone()))
        })
        .await?;
        let root = config.root();
        let store = EtcdStore {
            inner: Arc::new(Inner {
                client,
                kv_root: format!("{root}kv/"),
                election_root: format!("{root}election/"),
                config,
            }),
        };
        let probe = GetOptions::new().with_prefix().with_count_only();
        let kv_root = store.inner.kv_root.clone();
        (store.inner)
            .call("connect", &kv_root, |mut c| {
                let (key, probe) = (kv_root.clone(), probe.clone());
                async move { c.get(key, Some(probe)).await }
            })
            .await?;
        tracing::debug!(endpoints, prefix = %store.inner.config.prefix, "connected to etcd");
        Ok(store)
    }

    /// The config the store was connected with.
    pub fn config(&self) -> &EtcdConfig {
        &self.inner.config
    }
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The TLS settings of the config: its CA, and its client identity when it has one.
fn tls_options(config: &EtcdConfig, ca: &std::path::Path) -> Result<etcd_client::TlsOptions> {
    let read = |field: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| Error::Config {
            field,
            reason: format!("cannot read {}: {e}", path.display()),
        })
    };
    let mut tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read("ca", ca)?));
    if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
        tls = tls.identity(etcd_client::Identity::from_pem(
            read("cert", cert)?,
            read("key", key)?,
        ));
    }
    if let Some(domain) = &config.tls_domain {
        tls = tls.domain_name(domain.clone());
    }
    Ok(tls)
}

/// Runs `attempt` under the config's deadline, trying again after transient failures.
async fn with_retries<T, F, Fut>(
    config: &EtcdConfig,
    op: &'static str,
    key: &str,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let mut tries = 0;
    loop {
        let error = match tokio::time::timeout(config.timeout, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(source)) => Error::Etcd {
                op,
                key: key.to_owned(),
                source,
            },
            Err(_) => Error::Timeout {
                op,
                key: key.to_owned(),
                after: config.timeout,
            },
        };
        if !error.is_retryable() || tries >= config.retries {
            return Err(error);
        }
        let delay = backoff(tries);
        tracing::debug!(op, key, tries, ?delay, %error, "etcd request failed; trying again");
        tokio::time::sleep(delay).await;
        tries += 1;
    }
}

/// 50 ms, 100 ms, 200 ms, … up to 2 s, each with up to 50 % random jitter.
pub(crate) fn backoff(tries: u32) -> Duration {
    use std::hash::BuildHasher;
    let base = Duration::from_millis(50)
        .saturating_mul(1 << tries.min(6))
        .min(Duration::from_secs(2));
    let jitter = std::collections::hash_map::RandomState::new().hash_one(tries) % 1000;
    base + base.mul_f64(jitter as f64 / 2000.0)
}

impl Inner {
    /// [`with_retries`] with a fresh handle of the client for each attempt.
    pub(crate) async fn call<T, F, Fut>(&self, op: &'static str, key: &str, mut f: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        with_retries(&self.config, op, key, || f(self.client.clone())).await
    }

    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.config.timeout
    }

    fn kv_key(&self, key: &str) -> String {
        format!("{}{key}", self.kv_root)
    }

    /// An etcd key-value under `kv_root` as this crate's [`KeyValue`].
    pub(crate) fn key_value(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        Ok(KeyValue {
            key: self.strip_kv_root(kv.key())?,
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
            lease: (kv.lease() != 0).then_some(kv.lease()),
        })
    }

    pub(crate) fn strip_kv_root(&self, key: &[u8]) -> Result<String> {
        let corrupt = |reason| Error::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason,
        };
        let relative = key
            .strip_prefix(self.kv_root.as_bytes())
            .ok_or_else(|| corrupt("outside the store's prefix"))?;
        String::from_utf8(relative.to_vec()).map_err(|_| corrupt("key is not UTF-8"))
    }
}

/// The revision in a response header (etcd always sends one).
pub(crate) fn header_revision(
    header: Option<&etcd_client::ResponseHeader>,
    key: &str,
) -> Result<Revision> {
    header.map(|h| h.revision()).ok_or_else(|| Error::Corrupt {
        key: key.to_owned(),
        reason: "response without a header",
    })
}

/// Turns etcd's "lease not found" answers into [`Error::LeaseExpired`] (for a request that
/// named `lease`).
pub(crate) fn lease_gone(error: Error, lease: Option<LeaseId>) -> Error {
    const NOT_FOUND: i32 = 5;
    let Some(lease) = lease else {
        return error;
    };
    match &error {
        Error::Etcd {
            source: etcd_client::Error::GRpcStatus(s),
            ..
        } if s.code() as i32 == NOT_FOUND && s.message().contains("lease") => {
            Error::LeaseExpired { lease }
        }
        Error::Etcd {
            source: etcd_client::Error::LeaseKeepAliveError(_),
            ..
        } => Error::LeaseExpired { lease },
        _ => error,
    }
}

fn put_options(lease: Option<LeaseId>) -> PutOptions {
    match lease {
        Some(id) => PutOptions::new().with_lease(id),
        None => PutOptions::new(),
    }
}

#[async_trait::async_trait]
impl MetaStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let full = self.inner.kv_key(key);
        let resp = (self.inner)
            .call("get", key, |mut c| {
                let full = full.clone();
                async move { c.get(full, None).await }
            })
            .await?;
        resp.kvs()
            .first()
            .map(|kv| self.inner.key_value(kv))
            .transpose()
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        let full = self.inner.kv_key(key);
        let resp = (self.inner)
            .call("put", key, |mut c| {
                let (full, value) = (full.clone(), value.clone());
                async move { c.put(full, value, Some(put_options(lease))).await }
            })
            .await
            .map_err(|e| lease_gone(e, lease))?;
        header_revision(resp.header(), key)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>> {
        let full = self.inner.kv_key(key);
        let compare = match expected {
            None => Compare::version(full.clone(), CompareOp::Equal, 0),
            Some(rev) => Compare::mod_revision(full.clone(), CompareOp::Equal, rev),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(
                full.clone(),
                value.clone(),
                Some(put_options(lease)),
            )])
            .or_else([TxnOp::get(full.clone(), None)]);
        let attempts = AtomicU32::new(0);
        let resp = (self.inner)
            .call("compare_and_swap", key, |mut c| {
                attempts.fetch_add(1, Ordering::Relaxed);
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(|e| lease_gone(e, lease))?;
        if resp.succeeded() {
            return header_revision(resp.header(), key).map(Some);
        }
        // After a retry the comparison may fail because our own first attempt was applied and
        // only its answer was lost: then the key holds exactly what we wrote.
        if attempts.load(Ordering::Relaxed) > 1 {
            for op in resp.op_responses() {
                if let TxnOpResponse::Get(get) = op
                    && let Some(kv) = get.kvs().first()
                    && kv.value() == value.as_slice()
                    && kv.lease() == lease.unwrap_or(0)
                    && expected.is_none_or(|rev| kv.mod_revision() > rev)
                {
                    return Ok(Some(kv.mod_revision()));
                }
            }
        }
        Ok(None)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let full = self.inner.kv_key(key);
        let resp = (self.inner)
            .call("delete", key, |mut c| {
                let full = full.clone();
                async move { c.delete(full, None).await }
            })
            .await?;
        Ok(resp.deleted() > 0)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let full = self.inner.kv_key(prefix);
        let resp = (self.inner)
            .call("list", prefix, |mut c| {
                let full = full.clone();
                // etcd returns a range sorted by key
                async move { c.get(full, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        resp.kvs()
            .iter()
            .map(|kv| self.inner.key_value(kv))
            .collect()
    }

    async fn watch_prefix(&self, prefix: &str) -> Result<WatchStream> {
        let full = self.inner.kv_key(prefix);
        watch::watch_prefix(self.inner.clone(), prefix, full).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = ttl_seconds(ttl);
        let resp = (self.inner)
            .call("grant_lease", "", |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        // One request on a fresh keep-alive stream: etcd-client sends it and waits for the
        // answer, which says whether the lease still exists.
        let name = format!("{lease:#x}");
        (self.inner)
            .call("keep_alive", &name, |mut c| async move {
                c.lease_keep_alive(lease).await
            })
            .await
            .map(drop)
            .map_err(|e| lease_gone(e, Some(lease)))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        let name = format!("{lease:#x}");
        let revoked = (self.inner)
            .call("revoke_lease", &name, |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await;
        match revoked.map_err(|e| lease_gone(e, Some(lease))) {
            Ok(_) | Err(Error::LeaseExpired { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn campaign(&self, election: &str, candidate: &str, lease: LeaseId) -> Result<LeaderKey> {
        check_election_name(election)?;
        election::campaign(&self.inner, election, candidate, lease).await
    }

    async fn leader(&self, election: &str) -> Result<Option<String>> {
        check_election_name(election)?;
        election::leader(&self.inner, election).await
    }

    async fn resign(&self, leader: &LeaderKey) -> Result<()> {
        election::resign(&self.inner, leader).await
    }
}
