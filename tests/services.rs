//! Services from shared objects: loading, the ABI check, clear errors, warm caching, and
//! calls whose panics and errors stay on the service's side.

#[path = "../examples/support/services.rs"]
mod support;

use std::sync::OnceLock;

mod common;

use microsched::{CallError, LoadError, Service, ServiceCache};

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| support::build(false).expect("build the example services"))
}

#[test]
fn a_service_answers_and_stays_warm_in_the_cache() {
    // SAFETY: the directory holds the example services, built with `export_service!`.
    let cache = unsafe { ServiceCache::new(dir(), 2) };
    let hash = cache.get("svc_hash").unwrap();
    assert_eq!(hash.call(b"\x01abc").unwrap().len(), 16);
    assert_eq!(
        hash.call(b"\x01abc").unwrap(),
        hash.call(b"\x01abc").unwrap()
    );
    // Warm: the same object, no new load.
    let again = cache.get("svc_hash").unwrap();
    assert!(std::sync::Arc::ptr_eq(&hash, &again));
    assert_eq!(cache.loads(), 1);
    // The bound: a third service evicts the least recently used.
    cache.get("svc_json").unwrap();
    cache.get("svc_panic").unwrap();
    cache.get("svc_hash").unwrap();
    assert_eq!(cache.loads(), 4);
    let json = cache.get("svc_json").unwrap();
    let out = json.call(br#"{"a":"x","b":1}"#).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"a":"X","b":1,"keys":2}"#
    );
}

#[test]
fn panics_and_errors_come_back_as_values() {
    // SAFETY: as above.
    let cache = unsafe { ServiceCache::new(dir(), 8) };
    match cache.get("svc_panic").unwrap().call(b"xyz") {
        Err(CallError::Panicked(m)) => assert!(m.contains("panics on every request"), "{m}"),
        other => panic!("expected a panic, got {other:?}"),
    }
    match cache.get("svc_json").unwrap().call(b"[1, 2]") {
        Err(CallError::Failed(m)) => assert!(m.contains("expected a JSON object"), "{m}"),
        other => panic!("expected an error, got {other:?}"),
    }
    // The host is unharmed and the service still answers.
    assert!(cache.get("svc_json").unwrap().call(b"{}").is_ok());
}

#[test]
fn loading_errors_are_clear() {
    // SAFETY: as above.
    let cache = unsafe { ServiceCache::new(dir(), 8) };
    match cache.get("../etc/passwd") {
        Err(LoadError::BadName(_)) => {}
        other => panic!("{other:?}"),
    }
    let missing = cache.get("svc_nonexistent").unwrap_err();
    assert!(matches!(missing, LoadError::Open { .. }), "{missing:?}");
    assert!(
        missing.to_string().contains("libsvc_nonexistent.so"),
        "{missing}"
    );
    let wrong = cache.get("svc_badabi").unwrap_err();
    assert!(
        matches!(
            wrong,
            LoadError::WrongAbi {
                found: 999,
                expected: 1,
                ..
            }
        ),
        "{wrong:?}"
    );
    assert!(wrong.to_string().contains("rebuild"), "{wrong}");
    // A shared object that is not a service at all.
    // SAFETY: libm is a well-behaved shared object; the load fails on the ABI symbol before
    // anything of it is called.
    let not_a_service = unsafe { Service::load("libm.so.6") }.unwrap_err();
    assert!(
        matches!(not_a_service, LoadError::MissingSymbol { .. }),
        "{not_a_service:?}"
    );
    assert!(not_a_service.to_string().contains("export_service!"));
}

#[test]
fn a_cold_load_maps_a_fresh_copy() {
    let scratch = std::env::temp_dir();
    // SAFETY: as above.
    let cache = unsafe { ServiceCache::new(dir(), 8) };
    let loaded = || {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            // Only cold copies (`cold-<pid>-<n>-libsvc_hash.so`): the other tests of this
            // binary load and unload the original at the same time.
            .filter(|l| l.contains("/cold-") && l.contains("libsvc_hash.so") && l.contains("r-xp"))
            .count()
    };
    let before = loaded();
    let a = cache.get_cold("svc_hash", &scratch).unwrap();
    let after_one = loaded();
    let b = cache.get_cold("svc_hash", &scratch).unwrap();
    // Each cold load maps a copy of its own (the copy's file is gone, the mapping stays).
    assert!(after_one > before, "{before} -> {after_one}");
    assert!(loaded() > after_one);
    assert_ne!(a.path(), b.path());
    assert_eq!(a.call(b"\x01q").unwrap(), b.call(b"\x01q").unwrap());
    assert_eq!(cache.loads(), 0, "cold loads bypass the cache");
}

/// Concurrent first requests for a service load it once: the others wait for that load
/// and share its object. Repeated on fresh caches, since a race is won or lost by chance.
#[test]
fn concurrent_first_gets_load_a_service_once() {
    for round in 0..20 {
        // SAFETY: as above.
        let cache = unsafe { ServiceCache::new(dir(), 8) };
        let barrier = std::sync::Barrier::new(8);
        let services: Vec<_> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        cache.get("svc_hash").unwrap()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(cache.loads(), 1, "round {round}: one load for 8 first gets");
        assert!(
            services
                .iter()
                .all(|s| std::sync::Arc::ptr_eq(s, &services[0])),
            "round {round}: every caller got the same object"
        );
        // A name that fails to load is not cached: every get tries, and each says why.
        let misses: Vec<_> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| s.spawn(|| cache.get("no_such_service").is_err()))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert!(misses.iter().all(|&failed| failed), "round {round}");
    }
}

/// A service that overflows its stack right after it is loaded is frozen like any other
/// overflow: the handler knows its unwind tables from the load on (the monitor's refresh
/// would come up to 100 ms later, and an overflow whose frames cannot be walked ends the
/// process). Fresh copies of the object, loaded and called at once, several times.
#[test]
fn a_service_overflowing_right_after_its_load_is_frozen() {
    common::in_child(
        "a_service_overflowing_right_after_its_load_is_frozen",
        || {
            let pool = common::builder(1).build().unwrap();
            // SAFETY: as above.
            let cache = unsafe { ServiceCache::new(dir(), 8) };
            let scratch = std::env::temp_dir();
            for round in 0..8 {
                let service = cache.get_cold("svc_overflow", &scratch).unwrap();
                let h = pool.spawn(move || service.call(b"x").map(|v| v.len()));
                match common::join(h) {
                    Err(microsched::JoinError::Killed(k)) => assert_eq!(
                        k.reason(),
                        microsched::KillReason::StackOverflow,
                        "round {round}"
                    ),
                    other => panic!("round {round}: expected a stack-overflow kill, got {other:?}"),
                }
            }
            // SAFETY: ends the child at once: its frozen threads never exit, and the harness
            // would print to a stdout nobody reads.
            unsafe { libc::_exit(0) };
        },
    );
}

/// The same with an object the runtime was never told about: a task `dlopen`s a fresh
/// copy itself and calls it at once, before the monitor's periodic refresh could have
/// recorded its unwind tables. The fault handler asks the monitor to refresh now and waits
/// for it, instead of ending the process.
#[test]
fn an_overflow_in_an_object_loaded_behind_the_runtimes_back_is_frozen() {
    common::in_child(
        "an_overflow_in_an_object_loaded_behind_the_runtimes_back_is_frozen",
        || {
            let pool = common::builder(1).build().unwrap();
            let source = dir().join("libsvc_overflow.so");
            for round in 0..5 {
                let copy = std::env::temp_dir()
                    .join(format!("raw-overflow-{}-{round}.so", std::process::id()));
                std::fs::copy(&source, &copy).unwrap();
                let path = std::ffi::CString::new(copy.to_str().unwrap()).unwrap();
                let h = pool.spawn(move || {
                    // SAFETY: a copy of an example service (built with `export_service!`),
                    // whose entry point has the ABI's `CallFn` type; the buffers are live
                    // for the call.
                    unsafe {
                        let lib = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
                        assert!(!lib.is_null(), "dlopen failed");
                        let entry = libc::dlsym(lib, c"microsched_service_call".as_ptr());
                        assert!(!entry.is_null(), "no entry point");
                        let call = std::mem::transmute::<
                            *mut libc::c_void,
                            microsched_service::CallFn,
                        >(entry);
                        let mut out = [0u8; 64];
                        let mut len = 0usize;
                        call(b"x".as_ptr(), 1, out.as_mut_ptr(), out.len(), &mut len)
                    }
                });
                match common::join(h) {
                    Err(microsched::JoinError::Killed(k)) => assert_eq!(
                        k.reason(),
                        microsched::KillReason::StackOverflow,
                        "round {round}"
                    ),
                    other => {
                        panic!("round {round}: expected a stack-overflow kill, got {other:?}")
                    }
                }
                let _ = std::fs::remove_file(&copy);
            }
            // SAFETY: ends the child at once (its frozen threads never exit).
            unsafe { libc::_exit(0) };
        },
    );
}
