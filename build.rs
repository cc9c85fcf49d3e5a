//! Present only because `links = "microsched"` in Cargo.toml requires a build script: the
//! `links` key is what stops two copies of this crate (and its process-wide signal state)
//! from being linked into one binary.
fn main() {}
