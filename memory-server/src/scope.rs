//! The request scope: which project a request works on and whether its client gave up
//! on it, set by the transport for the whole request (one `tokio::task_local!`) and
//! read by routing and the tools, which never see headers or streams.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::postgres::ProjectKey;
use crate::project::ProjectPath;

#[derive(Clone, Default)]
struct RequestScope {
    /// `None`: the global database.
    project: Option<ProjectPath>,
    /// With PostgreSQL (`--database`), the project as the request names it instead (no
    /// file-system access); `None`: the global memory.
    key: Option<ProjectKey>,
    /// Raised when the request is dropped unfinished (see [`cancellable`]).
    cancel: Option<Arc<AtomicBool>>,
}

tokio::task_local! {
    static SCOPE: RequestScope;
}

/// Runs `fut` as a request on `project`.
pub async fn with_project<F: Future>(project: Option<ProjectPath>, fut: F) -> F::Output {
    SCOPE.scope(RequestScope { project, key: None, cancel: None }, fut).await
}

/// Runs `fut` as a request on the PostgreSQL project `key`.
pub async fn with_project_key<F: Future>(key: Option<ProjectKey>, fut: F) -> F::Output {
    SCOPE.scope(RequestScope { project: None, key, cancel: None }, fut).await
}

/// Runs `fut` (within the current request's project) so that dropping it cancels the
/// request: a write that has not committed yet is left out of its transaction (see
/// `tools::run`). For the revision 2026-07-28, whose clients cancel by closing the
/// response stream.
pub async fn cancellable<F: Future>(fut: F) -> F::Output {
    let Captured(mut scope) = capture();
    scope.cancel = Some(Arc::new(AtomicBool::new(false)));
    SCOPE.scope(scope, fut).await
}

/// The current request's project; `None` outside a request or for the global database.
pub fn current_project() -> Option<ProjectPath> {
    SCOPE.try_with(|s| s.project.clone()).ok().flatten()
}

/// The current request's scope, captured to run more of its work in it: a spawned task
/// or a streamed body does not inherit the task-local.
#[derive(Clone, Default)]
pub struct Captured(RequestScope);

pub fn capture() -> Captured {
    Captured(SCOPE.try_with(RequestScope::clone).unwrap_or_default())
}

/// Runs `fut` in a captured scope.
pub async fn within<F: Future>(scope: Captured, fut: F) -> F::Output {
    SCOPE.scope(scope.0, fut).await
}

/// The current request's PostgreSQL project; `None` outside a request or for the
/// global memory.
pub fn current_key() -> Option<ProjectKey> {
    SCOPE.try_with(|s| s.key.clone()).ok().flatten()
}

/// The current request's cancellation flag, inside [`cancellable`].
pub fn cancel_flag() -> Option<Arc<AtomicBool>> {
    SCOPE.try_with(|s| s.cancel.clone()).ok().flatten()
}

/// Sets the flag when dropped, i.e. when the future holding it is dropped unfinished
/// (after it finished, setting it changes nothing).
pub struct SetOnDrop(pub Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancellable_keeps_the_project_and_adds_a_flag() {
        let dir = tempfile::tempdir().unwrap();
        let project = ProjectPath::from_dir(dir.path().to_str().unwrap()).unwrap();
        assert!(current_project().is_none());
        let seen = with_project(Some(project.clone()), async {
            assert!(cancel_flag().is_none());
            cancellable(async { (current_project(), cancel_flag().is_some()) }).await
        })
        .await;
        assert_eq!(seen, (Some(project), true));
    }
}
