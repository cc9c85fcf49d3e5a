//! The engine, on ordinary threads.

pub(crate) mod carrier;
pub(crate) mod monitor;
pub(crate) mod runner;
pub(crate) mod shared;
pub(crate) mod signal;
pub(crate) mod slot;
pub(crate) mod steal;
pub(crate) mod text_scan;
