//! The build script. `links = "microsched"` in Cargo.toml needs one, and that key is what
//! stops two copies of this crate (and its process-wide signal state) from being linked
//! into one binary. It also checks the platform preconditions of hard kills (the crate
//! docs' "Platform") where it can: a glibc new enough that the stack it reports excludes
//! the guard page, which the signal handler's stack walk relies on.

use std::process::Command;

/// The oldest glibc whose `pthread_getattr_np` reports a thread's stack without its guard
/// page.
const MIN_GLIBC: (u32, u32) = (2, 27);
/// The first glibc with `_dl_find_object`, which the handler's walk uses to check that the
/// code at an address is the object it recorded (without it, kills that need a walk end
/// abandoned).
const WALK_GLIBC: (u32, u32) = (2, 35);

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let (host, target) = (
        std::env::var("HOST").unwrap_or_default(),
        std::env::var("TARGET").unwrap_or_default(),
    );
    if os != "linux" {
        // lib.rs has the compile error with the reason.
        return;
    }
    if env != "gnu" {
        println!(
            "cargo:warning=microsched: hard kills are checked on glibc only (target env \
             {env:?}); the stack walk assumes the reported stack excludes the guard page"
        );
        return;
    }
    if host != target {
        println!(
            "cargo:warning=microsched: cross-compiling: the target's glibc must be {}.{} \
             or later for hard kills",
            MIN_GLIBC.0, MIN_GLIBC.1
        );
        return;
    }
    // `getconf GNU_LIBC_VERSION` prints "glibc 2.36".
    let version = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            let v = s.split_whitespace().nth(1)?.to_string();
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next()??))
        });
    match version {
        Some(v) if v < MIN_GLIBC => panic!(
            "microsched needs glibc {}.{} or later for its hard kills (found {}.{}): older \
             versions report a thread's stack with its guard page inside, which the signal \
             handler's stack walk would read",
            MIN_GLIBC.0, MIN_GLIBC.1, v.0, v.1
        ),
        Some(v) if v < WALK_GLIBC => println!(
            "cargo:warning=microsched: glibc {}.{} has no _dl_find_object ({}.{}): hard kills \
             that need a stack walk will end abandoned instead of frozen",
            v.0, v.1, WALK_GLIBC.0, WALK_GLIBC.1
        ),
        Some(_) => {}
        None => println!(
            "cargo:warning=microsched: could not read the glibc version (getconf \
             GNU_LIBC_VERSION); hard kills need {}.{} or later",
            MIN_GLIBC.0, MIN_GLIBC.1
        ),
    }
}
