//! Loom model checks for microsched live in `tests/`; run them with
//! `RUSTFLAGS="--cfg loom" cargo test --release` in this folder (`.ci/run` does).
