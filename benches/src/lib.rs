//! Benchmarks arrive with the benchmark issue; `benches/contenders` will hold the harness scripts.
