//! Capacity harness and micro-benchmark support for seckill.
