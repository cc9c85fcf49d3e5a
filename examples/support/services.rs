//! Builds the example services (`services/*`, each a `cdylib`) and says where they are.
//! Shared by `examples/faas.rs`, `benches/coldstart.rs` and `tests/faas.rs`.
//!
//! They are built in release mode into a target directory of their own (`target/services`),
//! so this works while the Cargo that runs us holds the main one. A plain `cargo build`
//! builds them too (into `target/debug`).

use std::path::PathBuf;
use std::process::Command;

/// The example services.
pub const SERVICES: [&str; 6] = [
    "svc-hash",
    "svc-json",
    "svc-runaway",
    "svc-panic",
    "svc-overflow",
    "svc-badabi",
];

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds every example service (a no-op when they are up to date) and returns the
/// directory with their `lib<name>.so` files. With `dynamic_std`, each links std as a
/// shared library (`-C prefer-dynamic`) into `target/services-dyn` instead.
pub fn build(dynamic_std: bool) -> Result<PathBuf, String> {
    let target = root().join("target").join(if dynamic_std {
        "services-dyn"
    } else {
        "services"
    });
    let run = |cargo: &mut Command, what: &str| -> Result<(), String> {
        let status = cargo
            .status()
            .map_err(|e| format!("could not run cargo to build {what}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("building {what} failed ({status})"))
        }
    };
    if !dynamic_std {
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .current_dir(root())
            .args(["build", "--release", "--quiet", "--target-dir"])
            .arg(&target);
        for package in SERVICES {
            cargo.args(["-p", package]);
        }
        run(&mut cargo, "the services")?;
        return Ok(target.join("release"));
    }
    // Extra rustc flags go to one target at a time: each service's library.
    let sysroot = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("rustc --print sysroot: {e}"))?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    for package in SERVICES {
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .current_dir(root())
            .args([
                "rustc",
                "--lib",
                "--release",
                "--quiet",
                "-p",
                package,
                "--target-dir",
            ])
            .arg(&target)
            .args([
                "--",
                "-C",
                "prefer-dynamic",
                "-C",
                &format!("link-args=-Wl,-rpath,{sysroot}/lib"),
            ]);
        run(&mut cargo, package)?;
    }
    Ok(target.join("release"))
}
