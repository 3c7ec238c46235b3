//! Prefix watches on etcd that survive broken connections: a task forwards the events and
//! reopens the etcd watch from the next revision when its stream fails.

use std::sync::Arc;

use etcd_client::{EventType, GetOptions, WatchOptions};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{Inner, header_revision};
use crate::error::{Error, Result};
use crate::store::{Revision, WatchEvent, WatchStream};

/// Events buffered between the etcd stream and the consumer.
const BUFFER: usize = 256;

/// Watches the keys under `full` (the etcd key of `prefix`) from just after the current
/// revision.
pub(super) async fn watch_prefix(
    inner: Arc<Inner>,
    prefix: &str,
    full: String,
) -> Result<WatchStream> {
    let probe = GetOptions::new().with_prefix().with_count_only();
    let resp = inner
        .call("watch_prefix", prefix, |mut c| {
            let (full, probe) = (full.clone(), probe.clone());
            async move { c.get(full, Some(probe)).await }
        })
        .await?;
    let start = header_revision(resp.header(), prefix)? + 1;
    let stream = open(&inner, prefix, &full, start).await?;
    let (tx, rx) = mpsc::channel(BUFFER);
    let task = Pump {
        inner,
        prefix: prefix.to_owned(),
        full,
        next: start,
        tx,
    };
    tokio::spawn(task.run(stream));
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (event, rx))
    });
    Ok(events.boxed())
}

async fn open(
    inner: &Inner,
    prefix: &str,
    full: &str,
    start: Revision,
) -> Result<etcd_client::WatchStream> {
    let options = WatchOptions::new().with_prefix().with_start_revision(start);
    inner
        .call("watch_prefix", prefix, |mut c| {
            let (full, options) = (full.to_owned(), options.clone());
            async move { c.watch(full, Some(options)).await }
        })
        .await
}

struct Pump {
    inner: Arc<Inner>,
    prefix: String,
    full: String,
    /// The first revision not yet delivered.
    next: Revision,
    tx: mpsc::Sender<Result<WatchEvent>>,
}

impl Pump {
    async fn run(mut self, mut stream: etcd_client::WatchStream) {
        loop {
            let message = tokio::select! {
                () = self.tx.closed() => return, // the consumer dropped the stream
                message = stream.message() => message,
            };
            match message {
                Ok(Some(resp)) if resp.compact_revision() > 0 => {
                    let error = Error::Compacted {
                        prefix: self.prefix.clone(),
                        revision: resp.compact_revision(),
                    };
                    let _ = self.tx.send(Err(error)).await;
                    return;
                }
                Ok(Some(resp)) if resp.canceled() => {
                    let reason = resp.cancel_reason();
                    tracing::warn!(prefix = %self.prefix, reason, "etcd canceled the watch");
                }
                Ok(Some(resp)) => {
                    if !self.forward(resp.events()).await {
                        return;
                    }
                    continue;
                }
                Ok(None) => tracing::debug!(prefix = %self.prefix, "etcd watch stream ended"),
                Err(error) => tracing::warn!(prefix = %self.prefix, %error, "etcd watch failed"),
            }
            // Reopen from the first revision not delivered (the open call retries).
            match open(&self.inner, &self.prefix, &self.full, self.next).await {
                Ok(reopened) => stream = reopened,
                Err(error) => {
                    let _ = self.tx.send(Err(error)).await;
                    return;
                }
            }
        }
    }

    /// Sends the events on; false when the watch has to end.
    async fn forward(&mut self, events: &[etcd_client::Event]) -> bool {
        for event in events {
            let event = self.convert(event);
            let failed = event.is_err();
            if let Ok(e) = &event {
                self.next = self.next.max(e.mod_revision() + 1);
            }
            if self.tx.send(event).await.is_err() || failed {
                return false;
            }
        }
        true
    }

    fn convert(&self, event: &etcd_client::Event) -> Result<WatchEvent> {
        let kv = event.kv().ok_or_else(|| Error::Corrupt {
            key: self.prefix.clone(),
            reason: "watch event without a key",
        })?;
        Ok(match event.event_type() {
            EventType::Put => WatchEvent::Put(self.inner.key_value(kv)?),
            EventType::Delete => WatchEvent::Delete {
                key: self.inner.strip_kv_root(kv.key())?,
                mod_revision: kv.mod_revision(),
            },
        })
    }
}
