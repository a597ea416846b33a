//! The relay a session uses, picked by the daemon's `transport`: streamable HTTP and
//! plain HTTP go through [`Relay`], the deprecated HTTP+SSE transport through
//! [`SseRelay`]. Both have the same surface, which is all `stdio` sees.

use std::sync::Arc;

use serde_json::Value;

use crate::config::{DaemonSpec, Transport};
use crate::legacy_sse::SseRelay;
use crate::relay::{Output, Relay};
use crate::runtime::RuntimeDir;

#[derive(Clone)]
pub enum Upstream {
    Streamable(Arc<Relay>),
    LegacySse(Arc<SseRelay>),
}

impl Upstream {
    pub fn new(
        spec: DaemonSpec,
        runtime: RuntimeDir,
        manager_port: u16,
        project: Option<&str>,
        out: Output,
    ) -> Upstream {
        match spec.transport {
            Transport::Sse => Upstream::LegacySse(SseRelay::new(spec, runtime, manager_port, project, out)),
            Transport::StreamableHttp | Transport::Http => {
                Upstream::Streamable(Relay::new(spec, runtime, manager_port, project, out))
            }
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Upstream::Streamable(r) => r.name(),
            Upstream::LegacySse(r) => r.name(),
        }
    }

    /// Starts finding (or starting) the daemon at once.
    pub fn warm_up(&self) {
        match self {
            Upstream::Streamable(r) => r.warm_up(),
            Upstream::LegacySse(r) => r.warm_up(),
        }
    }

    /// Forwards one client message; every answer and stream message goes to stdout.
    pub async fn forward(&self, message: Value) {
        match self {
            Upstream::Streamable(r) => r.forward(message).await,
            Upstream::LegacySse(r) => r.forward(message).await,
        }
    }

    /// Ends the daemon-side session (best effort, bounded).
    pub async fn close(&self) {
        match self {
            Upstream::Streamable(r) => r.close().await,
            Upstream::LegacySse(r) => r.close().await,
        }
    }
}

impl From<Arc<Relay>> for Upstream {
    fn from(relay: Arc<Relay>) -> Upstream {
        Upstream::Streamable(relay)
    }
}

impl From<Arc<SseRelay>> for Upstream {
    fn from(relay: Arc<SseRelay>) -> Upstream {
        Upstream::LegacySse(relay)
    }
}
