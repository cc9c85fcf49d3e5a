//! Bad settings get a clear error from `build()`, never a panic or a half-built pool.

use std::time::Duration;

use microsched::{BuildError, Pool, MAX_SPIN, MAX_WORKERS, MIN_STACK_SIZE};

fn allowed() -> Vec<usize> {
    // The default pool's slots are exactly the allowed cores, in order.
    let pool = Pool::builder().build().unwrap();
    pool.stats().slots.iter().map(|s| s.core.unwrap()).collect()
}

#[test]
fn zero_workers() {
    let err = Pool::builder().workers(0).build().unwrap_err();
    assert!(matches!(err, BuildError::NoWorkers), "{err:?}");
    assert!(err.to_string().contains("at least one worker"));
}

#[test]
fn empty_core_list() {
    let err = Pool::builder().cores([]).build().unwrap_err();
    assert!(matches!(err, BuildError::NoCores), "{err:?}");
}

#[test]
fn more_pinned_workers_than_cores() {
    let cores = allowed().len();
    let err = Pool::builder().workers(cores + 1).build().unwrap_err();
    assert!(
        matches!(err, BuildError::TooManyWorkers { workers, cores: c } if workers == cores + 1 && c == cores),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("pin(false)"),
        "the message says what to do"
    );
    // Without pinning, oversubscription is allowed.
    let pool = Pool::builder()
        .pin(false)
        .workers(cores + 1)
        .build()
        .unwrap();
    assert_eq!(pool.workers(), cores + 1);
}

#[test]
fn worker_limit() {
    let err = Pool::builder()
        .pin(false)
        .workers(MAX_WORKERS + 1)
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::WorkerLimit { .. }), "{err:?}");
}

#[test]
fn a_core_this_process_may_not_use() {
    let outside = allowed().iter().max().unwrap() + 1;
    for core in [outside, 5_000] {
        let err = Pool::builder().cores([core]).build().unwrap_err();
        assert!(
            matches!(err, BuildError::CoreNotAllowed { core: c, .. } if c == core),
            "{err:?}"
        );
        assert!(err.to_string().contains("affinity mask"));
    }
}

#[test]
fn duplicate_cores() {
    let first = allowed()[0];
    let err = Pool::builder().cores([first, first]).build().unwrap_err();
    assert!(
        matches!(err, BuildError::DuplicateCore(c) if c == first),
        "{err:?}"
    );
}

#[test]
fn stack_too_small() {
    let err = Pool::builder().stack_size(4096).build().unwrap_err();
    assert!(
        matches!(err, BuildError::StackTooSmall { requested: 4096, minimum } if minimum == MIN_STACK_SIZE),
        "{err:?}"
    );
    // The minimum itself works, and tasks run on it.
    let pool = Pool::builder()
        .workers(1)
        .stack_size(MIN_STACK_SIZE)
        .build()
        .unwrap();
    assert_eq!(
        pool.spawn(|| [1u8; 1024].iter().map(|&b| b as u32).sum::<u32>())
            .join()
            .unwrap(),
        1024
    );
}

#[test]
fn nul_in_thread_name() {
    let err = Pool::builder()
        .thread_name("bad\0name")
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::InvalidThreadName), "{err:?}");
}

#[test]
fn spin_too_long() {
    let err = Pool::builder()
        .spin(MAX_SPIN + Duration::from_nanos(1))
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::SpinTooLong { .. }), "{err:?}");
}

#[test]
fn explicit_cores_and_names_are_used() {
    let cores = allowed();
    let last = *cores.last().unwrap();
    let pool = Pool::builder()
        .cores([last])
        .thread_name("svc")
        .build()
        .unwrap();
    assert_eq!(pool.workers(), 1);
    assert_eq!(pool.stats().slots[0].core, Some(last));
    let name = pool
        .spawn(|| std::thread::current().name().map(str::to_owned))
        .join()
        .unwrap();
    assert_eq!(name.as_deref(), Some("svc-0"));
}

#[test]
fn fewer_workers_than_cores_take_the_first_cores() {
    let cores = allowed();
    let pool = Pool::builder().workers(1).build().unwrap();
    assert_eq!(pool.stats().slots[0].core, Some(cores[0]));
}

#[test]
fn errors_are_std_errors_that_can_cross_threads() {
    fn assert_error<E: std::error::Error + Send + Sync + 'static>() {}
    assert_error::<BuildError>();
    assert_error::<microsched::JoinError>();
    assert_error::<microsched::ShutdownTimedOut>();
}

#[test]
fn preemption_settings_are_checked() {
    use microsched::{MAX_KEEP_QUANTA, MAX_QUANTUM, MAX_STANDBYS, MIN_QUANTUM};
    use std::time::Duration;
    let err = Pool::builder()
        .quantum(MIN_QUANTUM - Duration::from_nanos(1))
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::InvalidQuantum { .. }), "{err}");
    assert!(err.to_string().contains("quantum("), "{err}");
    let err = Pool::builder()
        .quantum(MAX_QUANTUM + Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::InvalidQuantum { .. }), "{err}");
    let err = Pool::builder().max_carriers(0).build().unwrap_err();
    assert!(matches!(err, BuildError::NoCarriers), "{err}");
    for standbys in [0, MAX_STANDBYS + 1] {
        let err = Pool::builder().standbys(standbys).build().unwrap_err();
        assert!(matches!(err, BuildError::InvalidStandbys { .. }), "{err}");
    }
    for quanta in [0, MAX_KEEP_QUANTA + 1] {
        let err = Pool::builder().keep_quanta(quanta).build().unwrap_err();
        assert!(matches!(err, BuildError::InvalidKeepQuanta { .. }), "{err}");
    }
    // With preemption off none of them is used, so none is checked.
    Pool::builder()
        .workers(1)
        .preemption(false)
        .quantum(Duration::ZERO)
        .max_carriers(0)
        .standbys(0)
        .build()
        .unwrap();
}

#[test]
fn a_preemptible_pool_keeps_its_standbys_parked_and_a_plain_one_has_none() {
    let pool = Pool::builder().workers(1).build().unwrap();
    // Standbys count themselves in just after the build returns.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pool.stats().standbys < u64::from(microsched::DEFAULT_STANDBYS) {
        assert!(std::time::Instant::now() < deadline, "{:?}", pool.stats());
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(
        pool.stats().slots[0].standbys,
        u64::from(microsched::DEFAULT_STANDBYS)
    );
    let plain = Pool::builder()
        .workers(1)
        .preemption(false)
        .build()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(10));
    assert_eq!(plain.stats().standbys, 0);
}
