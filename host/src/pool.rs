//! The children of one hosted server, by share key (`share`: one for all sessions, one
//! per project, one per session), and which sessions are attached to which. Attaching
//! and the idle sweep hold the same lock, so a child is never stopped under a session
//! that is joining it.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mcp_proxy::config::{Hosted, Share};
use serde_json::Value;

use crate::child::Child;
use crate::mux::SessionId;

/// Which child a session uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ShareKey {
    Global,
    Project(PathBuf),
    Session(SessionId),
}

impl fmt::Display for ShareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShareKey::Global => f.write_str("all sessions"),
            ShareKey::Project(p) => write!(f, "project {}", p.display()),
            ShareKey::Session(s) => write!(f, "session {s}"),
        }
    }
}

impl ShareKey {
    /// `share_key` of `/status`: the project directory or session id (`*` for global).
    pub fn label(&self) -> String {
        match self {
            ShareKey::Global => "*".into(),
            ShareKey::Project(p) => p.display().to_string(),
            ShareKey::Session(s) => s.to_string(),
        }
    }
}

pub struct Pool {
    pub name: String,
    pub hosted: Hosted,
    startup_timeout: Duration,
    log: String,
    children: Mutex<HashMap<ShareKey, Arc<Child>>>,
}

impl Pool {
    pub fn new(name: &str, hosted: Hosted, startup_timeout: Duration, log: String) -> Pool {
        Pool { name: name.to_owned(), hosted, startup_timeout, log, children: Mutex::new(HashMap::new()) }
    }

    fn children(&self) -> MutexGuard<'_, HashMap<ShareKey, Arc<Child>>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn share(&self) -> Share {
        self.hosted.share
    }

    /// The key of a new session's child.
    pub fn key_for(&self, session: &SessionId, project: Option<PathBuf>) -> ShareKey {
        match (self.hosted.share, project) {
            (Share::Global, _) => ShareKey::Global,
            (Share::Project, Some(dir)) => ShareKey::Project(dir),
            // A session without a project shares the host's working directory's child.
            (Share::Project, None) => ShareKey::Global,
            (Share::Session, _) => ShareKey::Session(session.clone()),
        }
    }

    /// Attaches a session (of `project`) to the child for `key` (made when there is none).
    pub fn attach(&self, key: ShareKey, project: Option<&Path>, session: SessionId, capabilities: Value) -> Arc<Child> {
        let mut children = self.children();
        let project = match key {
            ShareKey::Global => None,
            _ => project,
        };
        let child = children
            .entry(key.clone())
            .or_insert_with(|| {
                Child::new(key, project, &self.name, self.hosted.server.clone(), self.startup_timeout, self.log.clone())
            })
            .clone();
        child.mux().join(session, capabilities);
        child.set_idle(false);
        child
    }

    /// Detaches a session; returns the child when it must go now (a session's own child).
    pub fn detach(&self, child: &Arc<Child>, session: &SessionId) -> Option<Arc<Child>> {
        let mut children = self.children();
        let left = child.mux().leave(session);
        for answer in &left.to_child {
            child.send(answer);
        }
        for uri in left.unsubscribe {
            let c = child.clone();
            tokio::spawn(async move {
                let _ = c.ask("resources/unsubscribe", serde_json::json!({"uri": uri})).await;
            });
        }
        if let Some(level) = left.level {
            let c = child.clone();
            tokio::spawn(async move {
                let _ = c.ask("logging/setLevel", serde_json::json!({"level": level.as_str()})).await;
            });
        }
        if child.mux().members() > 0 {
            return None;
        }
        if matches!(child.key, ShareKey::Session(_)) {
            children.remove(&child.key);
            return Some(child.clone());
        }
        child.set_idle(true);
        None
    }

    /// Children without sessions for `idle_stop_secs`, taken out of the pool.
    pub fn take_idle(&self) -> Vec<Arc<Child>> {
        let idle_stop = self.hosted.idle_stop;
        let mut children = self.children();
        let idle: Vec<ShareKey> = children
            .iter()
            .filter(|(_, c)| c.mux().members() == 0 && c.idle_for().is_some_and(|d| d >= idle_stop))
            .map(|(k, _)| k.clone())
            .collect();
        idle.iter().filter_map(|k| children.remove(k)).collect()
    }

    pub fn take_all(&self) -> Vec<Arc<Child>> {
        self.children().drain().map(|(_, c)| c).collect()
    }

    pub fn all(&self) -> Vec<Arc<Child>> {
        self.children().values().cloned().collect()
    }
}
