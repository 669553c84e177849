//! sluice-bench: the tools that stand around sluice when it is measured.
//!
//! `mock` is the mock LLM upstream: an OpenAI-compatible HTTP/1.1 server on
//! thread-per-core monoio workers, with deterministic completions and usage
//! and scripted faults (slow first byte, gaps, error statuses, stalls,
//! disconnects). sluice's end-to-end tests start it in-process with
//! [`mock::spawn`]; benchmarks run it as the `sluice-mock` binary.
//!
//! The load generator and report tooling will live next to it.

pub mod mock;
