//! A client's view: read the prefix, then watch it, surviving etcd restarts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{bounded, EtcdConfig, EtcdError, ServerRecord};
use crate::discovery::{Discovery, RegionMap, StaticDiscovery};

/// Membership that follows an etcd key prefix: a [`Discovery`] for
/// [`RegionClient`](crate::region::RegionClient) and proxies.
///
/// Dropping it stops the watch.
pub struct EtcdDiscovery {
    map: Arc<watch::Sender<RegionMap>>,
    records: Arc<Mutex<BTreeMap<Vec<u8>, ServerRecord>>>,
    connected: Arc<AtomicBool>,
    revision: Arc<AtomicI64>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for EtcdDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdDiscovery")
            .field("connected", &self.is_connected())
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

/// The state the watch task shares with the handle.
#[derive(Clone)]
struct Membership {
    base: RegionMap,
    map: Arc<watch::Sender<RegionMap>>,
    records: Arc<Mutex<BTreeMap<Vec<u8>, ServerRecord>>>,
    connected: Arc<AtomicBool>,
    revision: Arc<AtomicI64>,
}

impl Membership {
    fn records(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, ServerRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuilds the region map from the base map and the records, and publishes it if it
    /// changed.
    fn publish(&self) {
        let mut map = self.base.clone();
        for r in self.records().values() {
            map.add_server(&r.region, r.endpoint());
        }
        self.map.send_if_modified(|m| {
            if *m == map {
                false
            } else {
                *m = map;
                true
            }
        });
    }

    /// Applies one key's new value; a value that does not parse counts as no server.
    fn apply_put(&self, key: &[u8], value: &[u8]) {
        let parsed = serde_json::from_slice::<ServerRecord>(value)
            .map_err(|e| e.to_string())
            .and_then(|r| r.check().map(|()| r));
        let mut records = self.records();
        match parsed {
            Ok(r) => {
                records.insert(key.to_vec(), r);
            }
            Err(e) => {
                warn!(key = %String::from_utf8_lossy(key), error = %e, "skipping a malformed server record in etcd");
                records.remove(key);
            }
        }
    }
}

impl EtcdDiscovery {
    /// Reads the servers registered in etcd and follows them. Fails if etcd cannot be
    /// read within the connect timeout; once started, outages are ridden out with the last
    /// known membership.
    pub async fn connect(config: EtcdConfig) -> Result<Arc<EtcdDiscovery>, EtcdError> {
        Self::connect_with_base(config, RegionMap::new()).await
    }

    /// As [`connect`](Self::connect), with the regions and servers of `base` (e.g. the
    /// `[[region]]` lists of a region file) always listed besides those in etcd.
    pub async fn connect_with_base(
        config: EtcdConfig,
        base: RegionMap,
    ) -> Result<Arc<EtcdDiscovery>, EtcdError> {
        let config = config.validated()?;
        let mut client = config.client().await?;
        let shared = Membership {
            map: Arc::new(watch::channel(base.clone()).0),
            base,
            records: Arc::new(Mutex::new(BTreeMap::new())),
            connected: Arc::new(AtomicBool::new(false)),
            revision: Arc::new(AtomicI64::new(0)),
        };
        read_all(&mut client, &config, &shared).await?;
        let task = tokio::spawn(follow(client, config, shared.clone()));
        Ok(Arc::new(EtcdDiscovery {
            map: shared.map,
            records: shared.records,
            connected: shared.connected,
            revision: shared.revision,
            task,
        }))
    }

    /// Reads the region file at `path`: with an `[etcd]` table, its servers come from etcd
    /// plus the file's `[[region]]` lists; without one, only from the lists (no etcd).
    pub async fn from_region_file(path: impl AsRef<Path>) -> Result<Arc<dyn Discovery>, EtcdError> {
        let path = path.as_ref();
        let base = RegionMap::from_toml_file(path).map_err(|e| EtcdError::Config(e.to_string()))?;
        match EtcdConfig::from_toml_file(path)? {
            Some(config) => Ok(Self::connect_with_base(config, base).await?),
            None => Ok(StaticDiscovery::new(base)),
        }
    }

    /// Every server record now known, in key order (with catalogs and load, for tools
    /// and proxies).
    pub fn records(&self) -> Vec<ServerRecord> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The current region map.
    pub fn snapshot(&self) -> RegionMap {
        self.map.borrow().clone()
    }

    /// Whether the watch on etcd is established now (if not, the last known membership is
    /// in force).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The last etcd revision applied.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Relaxed)
    }
}

impl Drop for EtcdDiscovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Discovery for EtcdDiscovery {
    fn watch(&self) -> watch::Receiver<RegionMap> {
        self.map.subscribe()
    }
}

/// Reads the whole prefix and replaces the records with it.
async fn read_all(
    client: &mut Client,
    config: &EtcdConfig,
    shared: &Membership,
) -> Result<(), EtcdError> {
    let resp = bounded(
        config.connect_timeout,
        "read the prefix",
        client.get(
            config.prefix.as_str(),
            Some(GetOptions::new().with_prefix()),
        ),
    )
    .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    shared.records().clear();
    for kv in resp.kvs() {
        shared.apply_put(kv.key(), kv.value());
    }
    shared.revision.store(revision, Ordering::Relaxed);
    shared.connected.store(true, Ordering::Relaxed);
    shared.publish();
    debug!(
        revision,
        servers = shared.records().len(),
        "read the etcd prefix"
    );
    Ok(())
}

/// The discovery's background task: watch from the last revision, reconnect with backoff,
/// read the prefix again when the revision was compacted.
async fn follow(mut client: Client, config: EtcdConfig, shared: Membership) {
    let mut backoff = Duration::from_millis(100);
    let mut need_read = false;
    loop {
        if need_read {
            match read_all(&mut client, &config, &shared).await {
                Ok(()) => need_read = false,
                Err(e) => {
                    shared.connected.store(false, Ordering::Relaxed);
                    debug!(error = %e, "etcd unreachable; keeping the last known membership");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            }
        }
        let from = shared.revision.load(Ordering::Relaxed) + 1;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        match bounded(
            config.connect_timeout,
            "watch",
            client.watch(config.prefix.as_str(), Some(options)),
        )
        .await
        {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        shared.connected.store(true, Ordering::Relaxed);
                        backoff = Duration::from_millis(100);
                        if resp.compact_revision() > 0 || resp.canceled() {
                            info!(
                                compacted = resp.compact_revision(),
                                reason = resp.cancel_reason(),
                                "etcd watch cancelled; reading the prefix again"
                            );
                            need_read = true;
                            break;
                        }
                        let behind = resp
                            .header()
                            .is_some_and(|h| h.revision() < from.saturating_sub(1));
                        if resp.created() && behind {
                            // etcd is at an older revision than we applied: its data was
                            // replaced (restored or wiped). Only a fresh read is right.
                            info!("etcd went back in revisions; reading the prefix again");
                            need_read = true;
                            break;
                        }
                        let mut last = 0;
                        for event in resp.events() {
                            let Some(kv) = event.kv() else { continue };
                            match event.event_type() {
                                EventType::Put => shared.apply_put(kv.key(), kv.value()),
                                EventType::Delete => {
                                    shared.records().remove(kv.key());
                                }
                            }
                            last = last.max(kv.mod_revision());
                        }
                        if last > 0 {
                            shared.revision.fetch_max(last, Ordering::Relaxed);
                            shared.publish();
                        }
                    }
                    Ok(None) => {
                        debug!("etcd watch stream ended");
                        break;
                    }
                    Err(e) => {
                        debug!(error = %e, "etcd watch broke; keeping the last known membership");
                        break;
                    }
                }
            },
            Err(e) => debug!(error = %e, "cannot watch etcd; keeping the last known membership"),
        }
        shared.connected.store(false, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn puts_of_records_and_of_junk_update_the_map() {
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let json =
            serde_json::to_vec(&ServerRecord::new("eu", addr, "eu.example").server_id("eu-1"))
                .unwrap();
        let membership = Membership {
            base: RegionMap::new(),
            map: Arc::new(watch::channel(RegionMap::new()).0),
            records: Arc::default(),
            connected: Arc::default(),
            revision: Arc::default(),
        };
        membership.apply_put(b"/m/eu/eu-1", &json);
        membership.publish();
        assert_eq!(membership.map.borrow().region_of(addr), Some("eu"));
        // A malformed value replaces the record: the key no longer names a server.
        membership.apply_put(b"/m/eu/eu-1", b"{not json");
        membership.apply_put(b"/m/eu/eu-2", &[0xff, 0x00]);
        membership.publish();
        assert_eq!(membership.map.borrow().region_of(addr), None);
    }
}
