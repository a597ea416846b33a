//! Change notices across daemons: every write transaction sends `NOTIFY memory_changes`
//! with its project's row id (delivered at commit), and each daemon keeps one connection
//! LISTENing, which it re-opens after an outage, and fans the notices out per project.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, NoTls, Socket};

use super::DatabaseUrl;
use tokio_util::sync::CancellationToken;

/// The notification channel.
pub const CHANNEL: &str = "memory_changes";
/// Notices a slow subscriber may fall behind by; it then sees one (coalesced) change.
const BUFFER: usize = 16;
/// Channels kept without subscribers before the idle ones are dropped.
const MAX_IDLE_CHANNELS: usize = 1024;

/// The change channels of the projects someone subscribed to, by project row id.
#[derive(Default)]
pub struct Channels {
    by_project: DashMap<i64, broadcast::Sender<()>>,
}

impl Channels {
    pub fn subscribe(&self, project: i64) -> broadcast::Receiver<()> {
        if self.by_project.len() >= MAX_IDLE_CHANNELS {
            self.by_project.retain(|_, tx| tx.receiver_count() > 0);
        }
        self.by_project.entry(project).or_insert_with(|| broadcast::channel(BUFFER).0).subscribe()
    }

    fn announce(&self, project: i64) {
        if let Some(tx) = self.by_project.get(&project) {
            let _ = tx.send(());
        }
    }

    /// After the listener was away, any project may have changed: tell every subscriber.
    fn announce_all(&self) {
        for tx in self.by_project.iter() {
            let _ = tx.send(());
        }
    }
}

/// Keeps a LISTEN connection open until `shutdown`, reconnecting with a growing pause
/// (0.25 s to 5 s) while the database is away.
pub fn spawn_listener(url: DatabaseUrl, channels: Arc<Channels>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(250);
        let mut first = true;
        loop {
            let session = async {
                match &url.tls {
                    Some(tls) => listen(&url.config, tls.clone(), &channels, first).await,
                    None => listen(&url.config, NoTls, &channels, first).await,
                }
            };
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = session => outcome,
            };
            match outcome {
                Ok(()) => pause = Duration::from_millis(250),
                Err(e) => tracing::warn!(db = url.shown(), error = %e, "lost the LISTEN connection; reconnecting"),
            }
            first = false;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    });
}

/// One LISTEN connection's life: returns when it ends.
async fn listen<T>(
    config: &tokio_postgres::Config,
    tls: T,
    channels: &Channels,
    first: bool,
) -> Result<(), tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = config.connect(tls).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {CHANNEL}");
    {
        // The connection is driven by polling `messages`; the LISTEN needs it driven too.
        let listening = client.batch_execute(&statement);
        tokio::pin!(listening);
        loop {
            tokio::select! {
                done = &mut listening => {
                    done?;
                    if !first {
                        channels.announce_all();
                    }
                    break;
                }
                message = messages.next() => match message {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                }
            }
        }
    }
    while let Some(message) = messages.next().await {
        // Notices (server warnings) carry nothing for subscribers.
        if let AsyncMessage::Notification(n) = message? {
            match n.payload().parse::<i64>() {
                Ok(project) => channels.announce(project),
                Err(_) => tracing::debug!(payload = n.payload(), "ignored a foreign notification"),
            }
        }
    }
    // `client` lives until here: dropping it would end the session and its LISTEN.
    drop(client);
    Ok(())
}
