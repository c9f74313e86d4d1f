//! One budget per store. wasmtime's stock `StoreLimits` caps each linear
//! memory on its own, so a component with many core instances could hold
//! many times its cap; this limiter adds up every memory and every table of
//! the store, and caps how many of each (and how many instances) it may
//! create, so the admin's `memory_limit_mib` bounds the whole call.

use wasmtime::ResourceLimiter;

/// Core instances one store may create. A Rust probe built for
/// wasm32-wasip2 needs a handful (its module, the adapter shims, fix-ups).
pub const MAX_INSTANCES: usize = 32;
/// Linear memories one store may create.
pub const MAX_MEMORIES: usize = 4;
/// Tables one store may create.
pub const MAX_TABLES: usize = 16;
/// Table elements of all tables of one store together.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Host resources (open files, directory streams, pollables, streams) one
/// call may hold at once: far below the daemon's descriptor limit.
pub const MAX_HOST_RESOURCES: usize = 256;

/// Why a store was refused more memory or table space.
#[derive(Debug, thiserror::Error)]
pub enum BudgetExceeded {
    /// All linear memories together would pass the cap.
    #[error("memory budget of {cap} bytes exceeded: {used} in use, {asked} more asked for")]
    Memory {
        /// The cap.
        cap: usize,
        /// Bytes already held by the store's memories.
        used: usize,
        /// Bytes the growth or new memory asked for.
        asked: usize,
    },
    /// All tables together would pass the element cap.
    #[error("table budget of {cap} elements exceeded")]
    TableElements {
        /// The cap.
        cap: usize,
    },
}

/// The limiter of one store.
#[derive(Debug)]
pub struct StoreBudget {
    memory_cap: usize,
    memory_used: usize,
    elements_used: usize,
}

impl StoreBudget {
    /// A budget of `memory_cap` bytes for all memories of the store.
    pub fn new(memory_cap: usize) -> StoreBudget {
        StoreBudget {
            memory_cap,
            memory_used: 0,
            elements_used: 0,
        }
    }

    /// Bytes the store's memories hold now.
    pub fn memory_used(&self) -> usize {
        self.memory_used
    }
}

impl ResourceLimiter for StoreBudget {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let asked = desired.saturating_sub(current);
        let total = self.memory_used.saturating_add(asked);
        if total > self.memory_cap {
            // An error, not `Ok(false)`: the guest traps (or instantiation
            // fails) instead of seeing -1 and carrying on.
            return Err(wasmtime::Error::new(BudgetExceeded::Memory {
                cap: self.memory_cap,
                used: self.memory_used,
                asked,
            }));
        }
        self.memory_used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .elements_used
            .saturating_add(desired.saturating_sub(current));
        if total > MAX_TABLE_ELEMENTS {
            return Err(wasmtime::Error::new(BudgetExceeded::TableElements {
                cap: MAX_TABLE_ELEMENTS,
            }));
        }
        self.elements_used = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memories_add_up_against_one_cap() {
        let mut b = StoreBudget::new(16 << 20);
        assert!(b.memory_growing(0, 10 << 20, None).unwrap());
        let e = b.memory_growing(0, 10 << 20, None).unwrap_err();
        assert!(e.to_string().contains("memory budget"), "{e}");
        assert!(b.memory_growing(10 << 20, 17 << 20, None).is_err());
        assert!(b.memory_growing(0, 6 << 20, None).unwrap());
        assert_eq!(b.memory_used(), 16 << 20);
    }

    #[test]
    fn table_elements_add_up() {
        let mut b = StoreBudget::new(1);
        assert!(b.table_growing(0, MAX_TABLE_ELEMENTS, None).unwrap());
        assert!(b.table_growing(0, 1, None).is_err());
    }
}
