//! Where inbound messages go when wshub runs standalone: the counterparts of the
//! library's `Handler` for people who do not write Rust.
//!
//! - `chat`: [`wshub::Broadcast`], every message to everyone.
//! - `webhook`: each message POSTed as JSON to a URL by a background worker.
//! - `stdio`: each message a JSON line on stdout; each stdin line is broadcast.
//!
//! Neither webhook nor stdio ever makes a connection wait: messages go through a bounded
//! queue, and when it is full the message is dropped and the drop is logged (with a
//! running count), never silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use wshub::prometheus_client::metrics::counter::Counter;
use wshub::{ConnInfo, Handler, Hub, Message};

/// The JSON event for one inbound message:
/// `{"connection": 7, "type": "text", "data": "hi"}`; binary data is base64.
pub fn event_json(conn: &ConnInfo, message: &Message) -> String {
    let (kind, data) = match message.as_text() {
        Some(text) => ("text", text.to_owned()),
        None => (
            "binary",
            base64::engine::general_purpose::STANDARD.encode(message.as_bytes()),
        ),
    };
    serde_json::json!({ "connection": conn.id().get(), "type": kind, "data": data }).to_string()
}

/// A bounded queue in front of a slow consumer (an HTTP endpoint, a pipe).
#[derive(Debug)]
struct Queue {
    tx: mpsc::Sender<String>,
    dropped: AtomicU64,
    name: &'static str,
    /// `wshub_webhook_drops_total` for the webhook's queue.
    drops: Option<Counter>,
}

impl Queue {
    fn push(&self, event: String) {
        if self.tx.try_send(event).is_err() {
            if let Some(drops) = &self.drops {
                drops.inc();
            }
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                sink = self.name,
                dropped,
                "sink queue full or closed: message dropped"
            );
        }
    }
}

/// `--on-message webhook`.
#[derive(Debug, Clone)]
pub struct Webhook {
    queue: Arc<Queue>,
    counts: WebhookCounts,
}

/// `wshub_webhook_deliveries_total` and `wshub_webhook_drops_total`.
#[derive(Debug, Clone, Default)]
struct WebhookCounts {
    /// Messages the webhook answered with a 2xx.
    deliveries: Counter,
    /// Messages given up: the queue was full, or every attempt failed.
    drops: Counter,
}

/// Webhook delivery settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where to POST.
    pub url: String,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Retries after the first failure.
    pub retries: usize,
    /// Queue length.
    pub queue: usize,
}

impl Webhook {
    /// Starts the delivery worker.
    pub fn start(config: WebhookConfig) -> anyhow::Result<Webhook> {
        let client = reqwest::Client::builder().timeout(config.timeout).build()?;
        let (tx, mut rx) = mpsc::channel::<String>(config.queue.max(1));
        let counts = WebhookCounts::default();
        let worker = counts.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if deliver(&client, &config, event).await {
                    worker.deliveries.inc();
                } else {
                    worker.drops.inc();
                }
            }
        });
        Ok(Webhook {
            queue: Arc::new(Queue {
                tx,
                dropped: AtomicU64::new(0),
                name: "webhook",
                drops: Some(counts.drops.clone()),
            }),
            counts,
        })
    }

    /// Adds the webhook's counters to the hub's `GET /metrics`.
    pub fn register_metrics(&self, hub: &Hub) {
        hub.register_metric(
            "webhook_deliveries",
            "Inbound messages the webhook accepted (2xx)",
            self.counts.deliveries.clone(),
        );
        hub.register_metric(
            "webhook_drops",
            "Inbound messages given up: the webhook queue was full or every attempt failed",
            self.counts.drops.clone(),
        );
    }
}

/// POSTs one event, retrying; true once the webhook took it.
async fn deliver(client: &reqwest::Client, config: &WebhookConfig, event: String) -> bool {
    let mut backoff = Duration::from_millis(100);
    for attempt in 0..=config.retries {
        let sent = client
            .post(&config.url)
            .header("content-type", "application/json")
            .body(event.clone())
            .send()
            .await;
        let failure = match sent {
            Ok(response) if response.status().is_success() => return true,
            Ok(response) => format!("status {}", response.status()),
            Err(error) => error.to_string(),
        };
        if attempt == config.retries {
            tracing::warn!(url = %config.url, %failure, attempts = attempt + 1, "webhook delivery failed: message dropped");
            return false;
        }
        tracing::debug!(url = %config.url, %failure, attempt, "webhook delivery failed, retrying");
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
    false
}

impl Handler for Webhook {
    async fn on_message(&self, _hub: &Hub, conn: &ConnInfo, message: Message) {
        self.queue.push(event_json(conn, &message));
    }
}

/// `--on-message stdio`.
#[derive(Debug, Clone)]
pub struct Stdio {
    queue: Arc<Queue>,
}

/// Lines waiting for stdout before new ones are dropped.
const STDOUT_QUEUE: usize = 4096;

impl Stdio {
    /// Starts the stdout writer; call [`Stdio::read_stdin`] once the hub exists.
    pub fn start() -> Stdio {
        let (tx, mut rx) = mpsc::channel::<String>(STDOUT_QUEUE);
        tokio::spawn(async move {
            let mut stdout = tokio::io::stdout();
            while let Some(mut line) = rx.recv().await {
                line.push('\n');
                if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err()
                {
                    tracing::warn!("stdout closed: inbound messages are no longer written");
                    return;
                }
            }
        });
        Stdio {
            queue: Arc::new(Queue {
                tx,
                dropped: AtomicU64::new(0),
                drops: None,
                name: "stdout",
            }),
        }
    }

    /// Broadcasts every line of stdin as a text message, until stdin ends.
    pub fn read_stdin(hub: Hub) {
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        hub.broadcast(line);
                    }
                    Ok(None) => {
                        tracing::info!("stdin closed: nothing more to broadcast from it");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "reading stdin failed");
                        return;
                    }
                }
            }
        });
    }
}

impl Handler for Stdio {
    async fn on_message(&self, _hub: &Hub, conn: &ConnInfo, message: Message) {
        self.queue.push(event_json(conn, &message));
    }
}
