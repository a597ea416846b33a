//! The cache of open stores, keyed by database path. Opening a store happens once even
//! when many requests for a new project arrive together: they all wait on the same
//! `OnceCell`, and a failed open leaves the cell empty so the next request retries.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::OnceCell;

use super::{Store, StoreError};

#[derive(Default)]
pub struct StoreRegistry {
    stores: DashMap<PathBuf, Arc<OnceCell<Arc<Store>>>>,
}

impl StoreRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The open store for `db_path`, opening (and migrating) it on first use.
    pub async fn get(&self, db_path: &Path) -> Result<Arc<Store>, StoreError> {
        if let Some(cell) = self.stores.get(db_path)
            && let Some(store) = cell.get()
        {
            return Ok(store.clone());
        }
        // Clone the cell out so no DashMap shard lock is held across the await.
        let cell = self.stores.entry(db_path.to_owned()).or_default().clone();
        cell.get_or_try_init(|| async {
            let path = db_path.to_owned();
            let store = tokio::task::spawn_blocking(move || Store::open(&path))
                .await
                .map_err(|e| StoreError::Io { path: db_path.to_owned(), source: std::io::Error::other(e) })??;
            tracing::info!(db = %db_path.display(), "store opened");
            Ok(Arc::new(store))
        })
        .await
        .cloned()
    }

    /// Stores that finished opening.
    pub fn open_stores(&self) -> Vec<Arc<Store>> {
        self.stores.iter().filter_map(|e| e.value().get().cloned()).collect()
    }

    pub fn open_count(&self) -> usize {
        self.stores.iter().filter(|e| e.value().initialized()).count()
    }
}
