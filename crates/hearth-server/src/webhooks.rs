//! Sends the outbox: each queued delivery is POSTed to its webhook, signed
//! as E2B signs it, and leaves the outbox when the target answers 2xx.
//! A failed attempt is made again after a growing wait, up to
//! [`MAX_ATTEMPTS`], then given up and its webhook marked failing. Nothing
//! here runs on an API request's path: a slow or broken target delays only
//! its own deliveries.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashSet;

use crate::events::{MAX_ATTEMPTS, retry_after, signature};
use crate::manager::{Manager, now_ms};
use crate::metrics::ResultLabel;
use crate::store::Delivery;

/// How long a target has to answer one delivery.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Deliveries sent at once (to different webhooks).
const PARALLEL: usize = 8;

/// How long a delivery taken from the outbox is this process's: other
/// processes sharing the store leave it alone meanwhile, and it is due
/// again after if this one never recorded how it went.
const LEASE: Duration = Duration::from_secs(30);

/// The longest the sender sleeps without looking at the outbox: events
/// written by another process are not announced.
const POLL: Duration = Duration::from_secs(1);

/// The sender of a server's webhook deliveries.
pub struct Sender {
    manager: Arc<Manager>,
    http: reqwest::Client,
    /// The webhooks with a delivery in flight: one each, so a webhook gets
    /// its events in order and a slow one holds one sending slot.
    busy: std::sync::Mutex<HashSet<String>>,
    /// Told when a delivery ends.
    done: tokio::sync::Notify,
}

impl Sender {
    pub fn new(manager: Arc<Manager>) -> Result<Self, reqwest::Error> {
        // rustls needs a process-wide crypto provider; `ring`, as the CLI.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .user_agent(concat!("hearth/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            manager,
            http,
            busy: std::sync::Mutex::default(),
            done: tokio::sync::Notify::new(),
        })
    }

    fn busy(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends deliveries as they fall due, [`PARALLEL`] at once, until its
    /// task is aborted (deliveries in flight then are made again by the
    /// next server, or by another process sharing the store once their
    /// [`LEASE`] ends). Each delivery is taken from the outbox by one
    /// process: a cluster's nodes send each once between them.
    pub async fn run(self: Arc<Self>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let mut feed = self.manager.store().event_feed();
        match self.manager.store().release_claims(now_ms()) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!("{n} webhook deliveries in flight at the last stop are due again")
            }
            Err(e) => tracing::warn!("releasing the last run's webhook deliveries: {e}"),
        }
        let lease = i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
        loop {
            let busy: Vec<String> = self.busy().iter().cloned().collect();
            let free = u32::try_from(slots.available_permits()).unwrap_or(u32::MAX);
            let now = now_ms();
            let due = match self
                .manager
                .store()
                .claim_deliveries(now, now + lease, &busy, free)
            {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!("reading the webhook outbox: {e}");
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            };
            let mut started = 0;
            for delivery in due {
                if !self.busy().insert(delivery.webhook_id.clone()) {
                    continue;
                }
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                started += 1;
                let sender = Arc::clone(&self);
                tokio::spawn(async move {
                    let webhook = delivery.webhook_id.clone();
                    sender.deliver(delivery).await;
                    sender.busy().remove(&webhook);
                    drop(slot);
                    sender.done.notify_one();
                });
            }
            if started > 0 {
                continue;
            }
            // Due ones not started wait for their webhook's delivery in
            // flight, whose end wakes this.
            let wait = match self.manager.store().next_delivery_at() {
                Ok(Some(at)) if at > now_ms() => {
                    Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)).min(POLL)
                }
                _ => POLL,
            };
            tokio::select! {
                _ = feed.changed() => {}
                () = self.done.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One attempt at `delivery`, recorded.
    async fn deliver(&self, delivery: Delivery) {
        let body = delivery.event.to_json().to_string();
        let attempt = delivery.attempts + 1;
        let outcome = self.send(&delivery, body).await;
        let store = self.manager.store();
        let metrics = self.manager.server_metrics();
        let recorded = match outcome {
            Ok(()) => {
                metrics
                    .webhook_deliveries
                    .get_or_create(&ResultLabel {
                        result: "delivered",
                    })
                    .inc();
                store.delivered(&delivery.webhook_id, delivery.event.seq)
            }
            Err(error) => {
                let retry = retry_after(attempt);
                let result = if retry.is_some() { "retried" } else { "failed" };
                metrics
                    .webhook_deliveries
                    .get_or_create(&ResultLabel { result })
                    .inc();
                tracing::warn!(
                    webhook = delivery.webhook_id,
                    event = delivery.event.id,
                    attempt,
                    max = MAX_ATTEMPTS,
                    "webhook delivery failed: {error}"
                );
                let retry_at = retry.map(|wait| {
                    now_ms().saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX))
                });
                store.delivery_failed(
                    &delivery.webhook_id,
                    delivery.event.seq,
                    &format!("attempt {attempt}: {error}"),
                    retry_at,
                )
            }
        };
        if let Err(e) = recorded {
            tracing::warn!(webhook = delivery.webhook_id, "recording a delivery: {e}");
        }
    }

    async fn send(&self, delivery: &Delivery, body: String) -> Result<(), String> {
        let signed = signature(&delivery.secret, body.as_bytes());
        let delivery_id =
            hearth_node::random_uuid().map_err(|e| format!("cannot draw a delivery id: {e}"))?;
        let answer = self
            .http
            .post(&delivery.url)
            .header("content-type", "application/json")
            .header("e2b-webhook-id", &delivery.webhook_id)
            .header("e2b-delivery-id", delivery_id)
            .header("e2b-signature-version", "v1")
            .header("e2b-signature", signed)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    format!("no answer within {} s", DELIVERY_TIMEOUT.as_secs())
                } else {
                    format!("cannot reach {}: {e}", delivery.url)
                }
            })?;
        let status = answer.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{} answered {status}", delivery.url))
        }
    }
}
