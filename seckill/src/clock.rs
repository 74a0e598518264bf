//! The wall clock, as the node and the settler read it: Unix time in
//! seconds, milliseconds and microseconds.

/// Unix time in seconds.
pub fn now_s() -> u64 {
    now_micros() / 1_000_000
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    now_micros() / 1_000
}

/// Unix time in microseconds.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
