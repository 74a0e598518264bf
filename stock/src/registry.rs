//! The sales a node knows, shared by its cores. Written when a sale is
//! created (rare); read by the cores only when `epoch` moved, into their
//! own caches, so the hot path never takes this lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::model::{SaleSpec, StockError};
use crate::sale::Sale;

#[derive(Default)]
pub(crate) struct Registry {
    sales: RwLock<HashMap<Box<str>, Arc<Sale>>>,
    epoch: AtomicU64,
}

impl Registry {
    pub(crate) fn get(&self, sale_id: &str) -> Option<Arc<Sale>> {
        self.sales.read().get(sale_id).cloned()
    }

    pub(crate) fn all(&self) -> Vec<Arc<Sale>> {
        self.sales.read().values().cloned().collect()
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Adds the sale `make` builds, unless one with this id exists: then the
    /// existing one if its spec is the same, else `InvalidState`.
    pub(crate) fn insert_with(
        &self,
        spec: &SaleSpec,
        make: impl FnOnce() -> Sale,
    ) -> Result<Arc<Sale>, StockError> {
        let mut sales = self.sales.write();
        if let Some(existing) = sales.get(spec.sale_id.as_str()) {
            return if existing.spec() == spec {
                Ok(existing.clone())
            } else {
                Err(StockError::InvalidState(
                    "a sale with this id exists with another definition",
                ))
            };
        }
        let sale = Arc::new(make());
        sales.insert(sale.id().into(), sale.clone());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        Ok(sale)
    }
}
