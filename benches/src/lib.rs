//! Benchmarks: cold start and decrypt throughput.
