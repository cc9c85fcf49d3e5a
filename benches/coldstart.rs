//! Cold start: a function as a shared object against the same work as a process.
//!
//! - **cold**: `dlopen` + call + `dlclose` of a distinct copy of the service's object each
//!   time (copied beforehand, so the loader maps and relocates every copy anew, with no
//!   loaded object or shared page to reuse; the paper used 5,000 copies). The copies are
//!   in the page cache: this is the loader's cost, not the disk's. Each is checked to be
//!   unloaded afterwards;
//! - **warm**: a call to a service already loaded;
//! - **process**: `posix_spawn` of a binary doing the same work, and `wait` (the same
//!   binary each time, so its pages are shared and warm: a bound in the process's favour).
//!
//! The same service is measured built two ways: with std linked in (a plain `cdylib`,
//! what `cargo build` makes: 400 KiB, but self-contained) and with std as a shared
//! library (`-C prefer-dynamic`: 9 KiB, but it needs the toolchain's `libstd-*.so` at run
//! time, which the host, linked statically as usual, does not keep loaded).
//!
//! `cargo bench --bench coldstart`. Ends with
//! `SUMMARY coldstart cold_us=.. warm_us=.. process_us=.. ratio_process_over_cold=..`,
//! for the plain `cdylib`; the other builds are printed above it.

#[path = "../examples/support/services.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use microsched::Service;

const COPIES: usize = 200;
const PAYLOAD: &[u8] = b"\x01the quick brown fox jumps over the lazy dog";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median µs of dlopen + call + dlclose over distinct copies of `object` (fresh names in
/// every round, so no round can find a copy still loaded by its name).
fn cold(object: &Path, scratch: &Path, round: usize) -> f64 {
    let copies: Vec<_> = (0..COPIES)
        .map(|i| {
            let copy = scratch.join(format!(
                "copy-{round}-{i}-{}",
                object.file_name().unwrap().to_string_lossy()
            ));
            std::fs::copy(object, &copy).expect("copy the service");
            copy
        })
        .collect();
    let times = copies
        .iter()
        .map(|copy| {
            let t = Instant::now();
            // SAFETY: a copy of an example service, built with `export_service!`.
            let service = unsafe { Service::load(copy) }.expect("load a copy");
            std::hint::black_box(service.call(PAYLOAD).expect("call"));
            drop(service);
            let elapsed = t.elapsed().as_secs_f64() * 1e6;
            assert!(
                !still_loaded(copy),
                "{} stayed loaded after dlclose",
                copy.display()
            );
            elapsed
        })
        .collect();
    for copy in copies {
        let _ = std::fs::remove_file(copy);
    }
    median(times)
}

/// True if the loader still has `path` mapped (`dlopen` with `RTLD_NOLOAD`).
fn still_loaded(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("a path");
    // SAFETY: a valid C string; RTLD_NOLOAD loads nothing, only looks.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    if handle.is_null() {
        return false;
    }
    // SAFETY: the handle just returned, closed once (it took a reference).
    unsafe { libc::dlclose(handle) };
    true
}

fn warm(object: &Path) -> f64 {
    // SAFETY: an example service, built with `export_service!`.
    let service = unsafe { Service::load(object) }.expect("load");
    median(
        (0..2_000)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(service.call(PAYLOAD).expect("call"));
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect(),
    )
}

/// Median µs of spawning `/bin/sh -c true`-like work: a process of our own, the hash
/// binary, hashing the same payload.
fn process(binary: &Path) -> f64 {
    median(
        (0..COPIES)
            .map(|_| {
                let t = Instant::now();
                let out = Command::new(binary)
                    .arg(String::from_utf8_lossy(PAYLOAD).as_ref())
                    .output()
                    .expect("spawn the hash binary");
                assert!(out.status.success());
                std::hint::black_box(out.stdout);
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect(),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let static_dir = support::build(false)?;
    let dynamic_dir = support::build(true)?;
    let scratch = std::env::temp_dir().join(format!("microsched-coldstart-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let object = |dir: &Path| dir.join("libsvc_hash.so");
    let binary = static_dir.join("hash-once");
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len() / 1024).unwrap_or(0);
    println!(
        "service objects: std linked in {} KiB, std shared {} KiB; process binary {} KiB",
        size(&object(&static_dir)),
        size(&object(&dynamic_dir)),
        size(&binary)
    );
    // Interleave the measurements in rounds, so drift hits them alike.
    let (mut cs, mut cd, mut cp, mut w, mut p) = (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..3 {
        cs.push(cold(&object(&static_dir), &scratch, 3 * round));
        // With std shared and no other service holding it, each dlclose unloads libstd
        // and each dlopen maps and relocates it again.
        cd.push(cold(&object(&dynamic_dir), &scratch, 3 * round + 1));
        // With one service kept loaded, libstd stays mapped: the per-service cost.
        // SAFETY: an example service, built with `export_service!`.
        let pin = unsafe { Service::load(object(&dynamic_dir)) }?;
        cp.push(cold(&object(&dynamic_dir), &scratch, 3 * round + 2));
        drop(pin);
        w.push(warm(&object(&static_dir)));
        p.push(process(&binary));
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let (cold_static, cold_dynamic, cold_pinned, warm, process) =
        (median(cs), median(cd), median(cp), median(w), median(p));
    println!("{:<46} {:>10}", "what (median of 3 rounds' medians)", "µs");
    println!(
        "{:<46} {:>10.1}",
        "cold, std linked in (plain cdylib)", cold_static
    );
    println!(
        "{:<46} {:>10.1}",
        "cold, std shared, libstd unloaded in between", cold_dynamic
    );
    println!(
        "{:<46} {:>10.1}",
        "cold, std shared, libstd kept loaded", cold_pinned
    );
    println!("{:<46} {:>10.2}", "warm call", warm);
    println!("{:<46} {:>10.1}", "process (posix_spawn + wait)", process);
    println!(
        "process / cold: {:.1} with std linked in; with std shared {:.1} (libstd reloaded), {:.1} (kept)",
        process / cold_static,
        process / cold_dynamic,
        process / cold_pinned
    );
    println!(
        "SUMMARY coldstart cold_us={cold_static:.1} warm_us={warm:.2} process_us={process:.1} ratio_process_over_cold={:.1}",
        process / cold_static
    );
    Ok(())
}
