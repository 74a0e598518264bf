//! A map split into independently locked stripes, so that two cores touch
//! the same lock only when their keys hash to the same stripe. Locks are
//! held for a few map operations and never across an `.await`.

use parking_lot::Mutex;

const STRIPES: usize = 64;

pub(crate) struct Striped<T> {
    stripes: Box<[Mutex<T>]>,
}

impl<T: Default> Striped<T> {
    pub(crate) fn new() -> Self {
        Striped {
            stripes: (0..STRIPES).map(|_| Mutex::new(T::default())).collect(),
        }
    }
}

impl<T> Striped<T> {
    /// The stripe that holds `key`.
    pub(crate) fn get(&self, key: &str) -> &Mutex<T> {
        &self.stripes[fnv(key.as_bytes()) as usize % STRIPES]
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Mutex<T>> {
        self.stripes.iter()
    }
}

/// FNV-1a: stable across builds and restarts, and cheap for short keys.
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) fn fnv(bytes: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.write(bytes);
    h.finish()
}
