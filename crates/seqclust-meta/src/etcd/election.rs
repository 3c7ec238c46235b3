//! Leader election on etcd with transactions and watches, the design of etcd's own
//! `concurrency.Election`: each candidate creates `<prefix>election/<name>/<lease hex>`
//! attached to its lease; the key with the lowest create revision leads; every other
//! candidate waits for the deletion of the key created just before its own.
//!
//! Unlike etcd's server-side `Campaign` RPC (one request that blocks until elected), each
//! step here is a short request with a deadline, so a frozen etcd cannot hang a campaign.

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};

use super::{Inner, header_revision, lease_gone};
use crate::error::{Error, Result};
use crate::store::{LeaderKey, LeaseId, Revision};

/// Longest wait on a predecessor's watch before looking again (a watch can fail silently).
const RECHECK: Duration = Duration::from_secs(5);

fn election_prefix(inner: &Inner, election: &str) -> String {
    format!("{}{election}/", inner.election_root)
}

pub(super) async fn campaign(
    inner: &Inner,
    election: &str,
    candidate: &str,
    lease: LeaseId,
) -> Result<LeaderKey> {
    let prefix = election_prefix(inner, election);
    let key = format!("{prefix}{lease:016x}");
    let put = TxnOp::put(
        key.clone(),
        candidate,
        Some(PutOptions::new().with_lease(lease)),
    );
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([put.clone()])
        .or_else([TxnOp::get(key.clone(), None)]);
    let resp = inner
        .call("campaign", election, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
        .map_err(|e| lease_gone(e, Some(lease)))?;
    let revision = if resp.succeeded() {
        header_revision(resp.header(), election)?
    } else {
        // Campaigning again with the same lease: keep the place in the queue, update the value.
        let ops = resp.op_responses();
        let existing = ops
            .first()
            .and_then(kv_of)
            .ok_or(Error::LeaseExpired { lease })?;
        let revision = existing.create_revision();
        if existing.value() != candidate.as_bytes() {
            let update = Txn::new()
                .when([Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([put]);
            let updated = inner
                .call("campaign", election, |mut c| {
                    let update = update.clone();
                    async move { c.txn(update).await }
                })
                .await
                .map_err(|e| lease_gone(e, Some(lease)))?;
            if !updated.succeeded() {
                return Err(Error::LeaseExpired { lease });
            }
        }
        revision
    };

    let mut withdraw = Withdraw {
        inner,
        key: key.clone(),
        revision,
        armed: true,
    };
    let predecessors = GetOptions::new()
        .with_prefix()
        .with_max_create_revision(revision - 1)
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_limit(1);
    loop {
        // One snapshot: is our key still there, and which key was created just before it?
        let look = Txn::new().and_then([
            TxnOp::get(key.clone(), None),
            TxnOp::get(prefix.clone(), Some(predecessors.clone())),
        ]);
        let resp = inner
            .call("campaign", election, |mut c| {
                let look = look.clone();
                async move { c.txn(look).await }
            })
            .await?;
        let at = header_revision(resp.header(), election)?;
        let ops = resp.op_responses();
        if ops.first().and_then(kv_of).is_none() {
            return Err(Error::LeaseExpired { lease }); // our key is gone: the lease ended
        }
        let Some(previous) = ops.get(1).and_then(kv_of) else {
            withdraw.armed = false;
            return Ok(LeaderKey {
                election: election.to_owned(),
                key,
                lease,
                revision,
            });
        };
        wait_for_delete(inner, election, previous.key().to_vec(), at + 1).await;
    }
}

/// The first key-value a get in a transaction found.
fn kv_of(op: &TxnOpResponse) -> Option<etcd_client::KeyValue> {
    match op {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
    }
}

/// Waits (at most [`RECHECK`]) until `key` is deleted at or after revision `from`.
async fn wait_for_delete(inner: &Inner, election: &str, key: Vec<u8>, from: Revision) {
    let options = WatchOptions::new().with_start_revision(from);
    let opened = inner
        .call("campaign", election, |mut c| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.watch(key, Some(options)).await }
        })
        .await;
    let Ok(mut stream) = opened else {
        return; // the next look reports the problem, or finds things changed
    };
    let deleted = async {
        while let Ok(Some(resp)) = stream.message().await {
            if resp.canceled()
                || resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
            {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(RECHECK, deleted).await;
}

/// Deletes the candidate key when a campaign is dropped before it leads.
struct Withdraw<'a> {
    inner: &'a Inner,
    key: String,
    revision: Revision,
    armed: bool,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime to send it with: the key goes when its lease ends
        };
        let (mut client, timeout) = (self.inner.client(), self.inner.timeout());
        let txn = delete_if_created_at(self.key.clone(), self.revision);
        runtime.spawn(async move {
            if let Err(error) = tokio::time::timeout(timeout, client.txn(txn)).await {
                tracing::warn!(%error, "could not withdraw an abandoned candidacy");
            }
        });
    }
}

fn delete_if_created_at(key: String, revision: Revision) -> Txn {
    Txn::new()
        .when([Compare::create_revision(
            key.clone(),
            CompareOp::Equal,
            revision,
        )])
        .and_then([TxnOp::delete(key, None)])
}

pub(super) async fn leader(inner: &Inner, election: &str) -> Result<Option<String>> {
    let prefix = election_prefix(inner, election);
    let first = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    let resp = inner
        .call("leader", election, |mut c| {
            let (prefix, first) = (prefix.clone(), first.clone());
            async move { c.get(prefix, Some(first)).await }
        })
        .await?;
    let Some(kv) = resp.kvs().first() else {
        return Ok(None);
    };
    String::from_utf8(kv.value().to_vec())
        .map(Some)
        .map_err(|_| Error::Corrupt {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            reason: "leader value is not UTF-8",
        })
}

pub(super) async fn resign(inner: &Inner, leader: &LeaderKey) -> Result<()> {
    let txn = delete_if_created_at(leader.key.clone(), leader.revision);
    inner
        .call("resign", &leader.election, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await?;
    Ok(())
}
