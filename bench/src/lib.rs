//! sluice-bench: the tools that stand around sluice when it is measured.
//!
//! `mock` is the mock LLM upstream: an OpenAI-compatible HTTP/1.1 server on
//! thread-per-core monoio workers, with deterministic completions and usage
//! and scripted faults (slow first byte, gaps, error statuses, stalls,
//! disconnects). sluice's end-to-end tests start it in-process with
//! [`mock::spawn`]; benchmarks run it as the `sluice-mock` binary.
//!
//! `load` is the load generator (`sluice-bench run`): closed loop, open
//! loop without coordinated omission, idle streams; HTTP/1.1 over TCP or
//! TLS; SSE stream checks; hdrhistogram results. `report` renders results
//! as Markdown and SVG plots; `compare` runs one scenario set against
//! several targets (direct, nginx, sluice, …) with CPU pinning and /proc
//! accounting (`sluice-bench compare`).

pub mod compare;
pub mod load;
pub mod mock;
pub mod report;
