//! A server's registration: its key under a lease kept alive until it stops.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{bounded, etcd_err, EtcdConfig, EtcdError, ServerRecord};
use crate::discovery::Registrant;

/// What ends a registration task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Revoke the lease: the key goes at once.
    Revoke,
    /// Just stop keeping the lease alive (as a crash would): the key goes at lease expiry.
    Abandon,
}

/// A server's entry in etcd, kept alive until [`EtcdRegistration::deregister`] (or drop,
/// which revokes the lease in the background).
///
/// While etcd is unreachable the registration keeps trying; when it comes back it renews
/// the same lease if it is still alive, or grants a new one and writes the key again.
#[derive(Debug)]
pub struct EtcdRegistration {
    key: String,
    lease: Arc<AtomicI64>,
    record: watch::Sender<ServerRecord>,
    stop: Option<oneshot::Sender<Stop>>,
    task: Option<JoinHandle<()>>,
}

impl EtcdRegistration {
    /// Registers `record`: grants a lease, writes the key, and keeps the lease alive in
    /// the background (on the current tokio runtime). Fails if etcd does not answer
    /// within the connect timeout.
    pub async fn register(
        config: &EtcdConfig,
        record: ServerRecord,
    ) -> Result<EtcdRegistration, EtcdError> {
        let config = config.clone().validated()?;
        record
            .check()
            .map_err(|e| EtcdError::Config(format!("bad server record: {e}")))?;
        let key = format!("{}{}/{}", config.prefix, record.region, record.server_id);
        let mut client = config.client().await?;
        let lease = grant_and_put(&mut client, &config, &key, &record).await?;
        info!(key = %key, lease, "registered in etcd");
        let lease_cell = Arc::new(AtomicI64::new(lease));
        let (record_tx, record_rx) = watch::channel(record);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(keep_registered(
            client,
            config,
            key.clone(),
            lease_cell.clone(),
            record_rx,
            stop_rx,
        ));
        Ok(EtcdRegistration {
            key,
            lease: lease_cell,
            record: record_tx,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    /// The key the server is registered under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The current lease id (it changes if the lease expired during an etcd outage).
    pub fn lease_id(&self) -> i64 {
        self.lease.load(Ordering::Relaxed)
    }

    /// The record as last written (or about to be).
    pub fn record(&self) -> ServerRecord {
        self.record.borrow().clone()
    }

    /// Changes the record; it is written again if it changed.
    pub fn update(&self, f: impl FnOnce(&mut ServerRecord)) {
        self.record.send_if_modified(|r| {
            let before = r.clone();
            f(r);
            // Key fields stay: the key is fixed for the registration's life.
            r.region = before.region.clone();
            r.server_id = before.server_id.clone();
            *r != before
        });
    }

    /// Copies a running server's catalog and load into the record (written if changed).
    pub fn refresh_from(&self, server: &impl Registrant) {
        self.update(|r| r.refresh_from(server));
    }

    /// Removes the server from etcd now (revokes the lease) and stops. Bounded by the
    /// connect timeout; if etcd is unreachable the key goes at lease expiry instead.
    pub async fn deregister(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Stop::Revoke);
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops keeping the lease alive without revoking it, as a crashed server would: the
    /// key stays until the lease expires (one TTL at most). For failure tests.
    pub fn abandon(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Stop::Abandon);
        }
    }
}

impl Drop for EtcdRegistration {
    fn drop(&mut self) {
        // The task revokes the lease on its own; nothing to wait for here.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Stop::Revoke);
        }
    }
}

async fn put_record(
    client: &mut Client,
    config: &EtcdConfig,
    key: &str,
    record: &ServerRecord,
    lease: i64,
) -> Result<(), EtcdError> {
    let value = serde_json::to_vec(record)
        .map_err(|e| EtcdError::Config(format!("cannot encode the record: {e}")))?;
    bounded(
        config.connect_timeout,
        "put",
        client.put(key, value, Some(PutOptions::new().with_lease(lease))),
    )
    .await
    .map(|_| ())
}

async fn grant_and_put(
    client: &mut Client,
    config: &EtcdConfig,
    key: &str,
    record: &ServerRecord,
) -> Result<i64, EtcdError> {
    let lease = bounded(
        config.connect_timeout,
        "lease grant",
        client.lease_grant(config.ttl_secs(), None),
    )
    .await?
    .id();
    put_record(client, config, key, record, lease).await?;
    Ok(lease)
}

/// The registration's background task: keep-alives, record updates, re-registration
/// after an outage, and the final revoke.
async fn keep_registered(
    mut client: Client,
    config: EtcdConfig,
    key: String,
    lease: Arc<AtomicI64>,
    mut record: watch::Receiver<ServerRecord>,
    mut stop: oneshot::Receiver<Stop>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut fresh = true;
    let reason = loop {
        let session = keep_alive_session(&mut client, &config, &key, &lease, &mut record, fresh);
        tokio::select! {
            s = &mut stop => break s.unwrap_or(Stop::Revoke),
            r = session => {
                fresh = false;
                match r {
                    Ok(()) => backoff = Duration::from_millis(100),
                    Err(e) => {
                        warn!(key = %key, error = %e, "etcd registration interrupted, retrying");
                    }
                }
            }
        }
        tokio::select! {
            s = &mut stop => break s.unwrap_or(Stop::Revoke),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    };
    if reason == Stop::Revoke {
        let id = lease.load(Ordering::Relaxed);
        match bounded(
            config.connect_timeout,
            "lease revoke",
            client.lease_revoke(id),
        )
        .await
        {
            Ok(_) => info!(key = %key, "deregistered from etcd"),
            Err(e) => {
                warn!(key = %key, error = %e, "cannot revoke the lease; the key goes at expiry")
            }
        }
    } else {
        debug!(key = %key, "registration abandoned; the key goes at lease expiry");
    }
}

/// One stretch of keep-alives on one stream; returns when the stream breaks or the lease
/// is gone. `fresh`: the lease and key were just written.
async fn keep_alive_session(
    client: &mut Client,
    config: &EtcdConfig,
    key: &str,
    lease: &AtomicI64,
    record: &mut watch::Receiver<ServerRecord>,
    fresh: bool,
) -> Result<(), EtcdError> {
    let limit = config.connect_timeout;
    let mut id = lease.load(Ordering::Relaxed);
    let (mut keeper, mut stream) =
        bounded(limit, "lease keep-alive", client.lease_keep_alive(id)).await?;
    if !fresh {
        // Back after an interruption: is the lease still alive?
        bounded(limit, "lease keep-alive", keeper.keep_alive()).await?;
        let alive = match bounded(limit, "lease keep-alive", stream.message()).await? {
            Some(resp) => resp.ttl() > 0,
            None => return Err(EtcdError::Timeout("lease keep-alive stream closed".into())),
        };
        let current = record.borrow_and_update().clone();
        if alive {
            // The key may have been lost with a restored snapshot: write it again.
            put_record(client, config, key, &current, id).await?;
        } else {
            id = grant_and_put(client, config, key, &current).await?;
            lease.store(id, Ordering::Relaxed);
            info!(key = %key, lease = id, "lease had expired: registered again");
            let (k, s) = bounded(limit, "lease keep-alive", client.lease_keep_alive(id)).await?;
            keeper = k;
            stream = s;
        }
    }
    let period = (config.lease_ttl / 3).max(Duration::from_millis(300));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_answer = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if last_answer.elapsed() > config.lease_ttl {
                    return Err(EtcdError::Timeout("lease keep-alive".into()));
                }
                bounded(limit, "lease keep-alive", keeper.keep_alive()).await?;
            }
            msg = stream.message() => match msg.map_err(etcd_err("lease keep-alive"))? {
                Some(resp) if resp.ttl() > 0 => last_answer = tokio::time::Instant::now(),
                Some(_) => {
                    // Expired (etcd was away longer than the TTL): start over.
                    let current = record.borrow_and_update().clone();
                    let id = grant_and_put(client, config, key, &current).await?;
                    lease.store(id, Ordering::Relaxed);
                    info!(key = %key, lease = id, "lease had expired: registered again");
                    return Ok(());
                }
                None => return Err(EtcdError::Timeout("lease keep-alive stream closed".into())),
            },
            changed = record.changed() => {
                if changed.is_err() {
                    // The registration handle is gone; the stop signal follows.
                    std::future::pending::<()>().await;
                }
                let current = record.borrow_and_update().clone();
                put_record(client, config, key, &current, lease.load(Ordering::Relaxed)).await?;
            }
        }
    }
}
