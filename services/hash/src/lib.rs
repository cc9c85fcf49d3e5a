//! Hashes its input (see `logic.rs`). Also built as a process, `hash-once`, for the
//! cold-start benchmark.

microsched_service::export_service!(logic::handle);

mod logic;
