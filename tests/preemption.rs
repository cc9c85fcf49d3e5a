//! Timer preemption: a long task no longer holds up the short ones behind it.
//!
//! Every test here runs in a child process (`common::in_child`): they install signal
//! handlers, demote threads and flood the process with timer signals.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{builder, check_spin, child_output, constantly_preempted, in_child, join, spin_for};
use microsched::TimerClock;

/// One slot, a CPU-bound task of ~300 ms, then 50 short tasks: every short task completes
/// while the long one is still running, and the long one completes with the right result.
#[test]
fn short_tasks_finish_while_a_long_one_runs_on_the_same_slot() {
    in_child(
        "short_tasks_finish_while_a_long_one_runs_on_the_same_slot",
        || {
            for clock in [
                TimerClock::Contention,
                TimerClock::ThreadCpu,
                TimerClock::Monotonic,
            ] {
                let pool = builder(1)
                    .quantum(Duration::from_millis(2))
                    .timer_clock(clock)
                    .build()
                    .unwrap();
                let long_done = Arc::new(AtomicBool::new(false));
                let long = {
                    let long_done = long_done.clone();
                    pool.spawn(move || {
                        let result = spin_for(Duration::from_millis(300));
                        long_done.store(true, Ordering::SeqCst);
                        result
                    })
                };
                // Let the long task start, so the short ones are queued behind it.
                std::thread::sleep(Duration::from_millis(5));
                let shorts: Vec<_> = (0..50u64)
                    .map(|i| {
                        let long_done = long_done.clone();
                        pool.spawn(move || (i * i, long_done.load(Ordering::SeqCst)))
                    })
                    .collect();
                for (i, short) in shorts.into_iter().enumerate() {
                    let (square, long_was_done) = join(short).unwrap();
                    assert_eq!(square, (i * i) as u64);
                    assert!(
                        !long_was_done,
                        "{clock:?}: short task {i} waited for the long one"
                    );
                }
                assert!(
                    !long_done.load(Ordering::SeqCst),
                    "{clock:?}: the long task ended first"
                );
                let (rounds, sum) = join(long).unwrap();
                assert_eq!(
                    sum,
                    check_spin(rounds),
                    "{clock:?}: the long task's result is wrong"
                );
                let stats = pool.stats();
                assert!(stats.handoffs >= 1, "{clock:?}: {stats:?}");
                assert_eq!(stats.completed, 51);
                pool.shutdown();
                let stats = pool.stats();
                assert_eq!(stats.carriers, 0, "{clock:?}: {stats:?}");
            }
        },
    );
}

/// The same with preemption off: the short tasks wait (the control that shows the test
/// above can fail).
/// CPU-bound work until this thread has used `cpu` of CPU time (so a task that waits or
/// is starved still does exactly its share of work); returns the rounds done.
fn spin_cpu(cpu: Duration) -> u64 {
    let now = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is valid for the call.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    };
    let end = now() + cpu;
    let mut rounds = 0u64;
    // Most of the time in the task's own code, little in the clock read (the vDSO is a
    // library to the freeze gate, which a carrier waiting for its turn consults).
    while now() < end {
        for _ in 0..100_000 {
            rounds = std::hint::black_box(rounds + 1);
        }
    }
    rounds
}

/// With the default clock, a task that runs while nothing waits for its slot sees no
/// timer at all: no tick reaches it, and it is never handed off.
#[test]
fn a_task_alone_sees_no_timer() {
    in_child("a_task_alone_sees_no_timer", || {
        let pool = builder(2).build().unwrap();
        for _ in 0..3 {
            assert!(join(pool.spawn(|| spin_cpu(Duration::from_millis(30)))).unwrap() > 0);
        }
        let stats = pool.stats();
        assert_eq!((stats.ticks, stats.handoffs), (0, 0), "{stats:?}");
        pool.shutdown();
    });
}

/// With the default clock, a task queued behind a busy runner makes the runner's quantum
/// end: the long task is handed off, the short one finishes first, and both results are
/// right.
#[test]
fn a_task_queued_behind_a_busy_runner_ends_its_quantum() {
    in_child(
        "a_task_queued_behind_a_busy_runner_ends_its_quantum",
        || {
            let pool = builder(1).build().unwrap();
            let order = Arc::new(std::sync::Mutex::new(Vec::new()));
            let long = {
                let order = order.clone();
                pool.spawn(move || {
                    let rounds = spin_cpu(Duration::from_millis(200));
                    order.lock().unwrap().push("long");
                    rounds
                })
            };
            std::thread::sleep(Duration::from_millis(20));
            let short = {
                let order = order.clone();
                pool.spawn(move || order.lock().unwrap().push("short"))
            };
            join(short).unwrap();
            assert!(join(long).unwrap() > 0);
            assert_eq!(*order.lock().unwrap(), ["short", "long"]);
            assert!(pool.stats().handoffs >= 1);
            pool.shutdown();
        },
    );
}

/// With the default clock, a pool learns how long its tasks run past their quantum: once
/// recent tasks that outlived it ended soon after (here 0.7 ms of CPU against a 0.5 ms
/// quantum), a task queued behind one no longer gets it handed off (a handoff costs more
/// than the rest of its run), but a runaway still is, at the bound (`keep_quanta`: 16
/// here, 8 ms, so that a loaded machine stretching the 0.7 ms tasks in wall time does
/// not push them past it): the task queued behind it runs while it is still running.
/// With `keep_quanta(1)` every such task is handed off.
#[test]
fn tasks_that_end_soon_after_their_quantum_keep_their_core_but_a_runaway_does_not() {
    in_child(
        "tasks_that_end_soon_after_their_quantum_keep_their_core_but_a_runaway_does_not",
        || {
            let pool = builder(1).keep_quanta(16).build().unwrap();
            // One task of 0.7 ms of CPU with a short one queued behind it, `rounds` times.
            let medium_rounds = |rounds: usize| {
                for _ in 0..rounds {
                    let medium = pool.spawn(|| spin_cpu(Duration::from_micros(700)));
                    let short = pool.spawn(|| 7u32);
                    assert_eq!(join(short).unwrap(), 7);
                    assert!(join(medium).unwrap() > 0);
                }
            };
            // Learning: with no history, the first are handed off.
            medium_rounds(40);
            let learned = pool.stats();
            assert!(learned.handoffs >= 1, "{learned:?}");
            medium_rounds(40);
            let after = pool.stats();
            let (handoffs, kept) = (after.handoffs - learned.handoffs, after.kept - learned.kept);
            assert!(
                kept >= 20 && handoffs <= 20,
                "of 40 tasks queued behind, {kept} kept their core and {handoffs} were \
                 handed off (learned: {learned:?})"
            );
            // A runaway with a task queued right behind it, while the history says
            // "keep": handed off at the bound all the same.
            let stop = Arc::new(AtomicBool::new(false));
            let done = Arc::new(AtomicBool::new(false));
            let runaway = {
                let (stop, done) = (stop.clone(), done.clone());
                pool.spawn(move || {
                    let started = Instant::now();
                    let mut rounds = 0u64;
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < HANG_GUARD {
                        rounds = std::hint::black_box(rounds + 1);
                    }
                    done.store(true, Ordering::SeqCst);
                    stop.load(Ordering::Relaxed)
                })
            };
            let before = pool.stats().handoffs;
            let behind = {
                let done = done.clone();
                pool.spawn(move || done.load(Ordering::SeqCst))
            };
            assert!(
                !join(behind).unwrap(),
                "the task queued behind the runaway ran only after it"
            );
            stop.store(true, Ordering::SeqCst);
            assert!(
                join(runaway).unwrap(),
                "the runaway ended before it was told to"
            );
            assert!(pool.stats().handoffs > before, "{:?}", pool.stats());
            pool.shutdown();
            // `keep_quanta(1)`: the quantum is strict, and every such task is handed off.
            let strict = builder(1).keep_quanta(1).build().unwrap();
            for _ in 0..80 {
                let medium = strict.spawn(|| spin_cpu(Duration::from_micros(700)));
                let short = strict.spawn(|| 7u32);
                assert_eq!(join(short).unwrap(), 7);
                assert!(join(medium).unwrap() > 0);
            }
            let stats = strict.stats();
            assert!(stats.kept == 0 && stats.handoffs >= 40, "{stats:?}");
            strict.shutdown();
        },
    );
}

/// How long a runaway in these tests runs at most if nothing stops it.
const HANG_GUARD: Duration = Duration::from_secs(20);

/// Carriers run oldest first: on one slot (two carriers may run at once: one per slot and
/// one spare), long tasks A and B are handed off, then C (least work), and D keeps the
/// slot. Shared as equals, C would finish before A and B; oldest first, it waits for its
/// turn and finishes after one of them.
#[test]
fn carriers_finish_oldest_first() {
    in_child("carriers_finish_oldest_first", || {
        let pool = builder(1).build().unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let spawn = |name: &'static str, cpu_ms: u64| {
            let order = order.clone();
            pool.spawn(move || {
                let rounds = spin_cpu(Duration::from_millis(cpu_ms));
                order.lock().unwrap().push(name);
                rounds
            })
        };
        let mut handles = Vec::new();
        for (name, cpu_ms) in [("a", 300), ("b", 300), ("c", 100), ("d", 100)] {
            handles.push(spawn(name, cpu_ms));
            std::thread::sleep(Duration::from_millis(10));
        }
        for h in handles {
            assert!(join(h).unwrap() > 0);
        }
        let order = order.lock().unwrap().clone();
        let at = |name| order.iter().position(|&n| n == name).unwrap();
        assert!(
            at("c") > at("a").min(at("b")),
            "{order:?} {:?}",
            pool.stats()
        );
        let stats = pool.stats();
        assert!(stats.handoffs >= 3, "{stats:?}");
        assert!(stats.carrier_waits >= 1, "{stats:?}");
        pool.shutdown();
    });
}

/// A carrier waits for its turn only so long: behind carriers that never end (tasks meant
/// to run until told to stop, no budget), a younger one still runs and its join resolves
/// while they go on.
#[test]
fn a_carrier_behind_carriers_that_never_end_still_finishes() {
    in_child(
        "a_carrier_behind_carriers_that_never_end_still_finishes",
        || {
            let pool = builder(1).build().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let forever = |stop: Arc<AtomicBool>| {
                move || {
                    let mut rounds = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        rounds = std::hint::black_box(rounds + 1);
                    }
                    rounds
                }
            };
            // Two places in the line (one slot, one spare): both taken by tasks that run
            // until `stop`.
            let a = pool.spawn(forever(stop.clone()));
            std::thread::sleep(Duration::from_millis(10));
            let b = pool.spawn(forever(stop.clone()));
            std::thread::sleep(Duration::from_millis(10));
            let c = pool.spawn(|| spin_cpu(Duration::from_millis(50)));
            std::thread::sleep(Duration::from_millis(10));
            let d = pool.spawn(|| spin_cpu(Duration::from_millis(20)));
            assert!(join(d).unwrap() > 0);
            assert!(join(c).unwrap() > 0);
            assert!(!a.is_finished() && !b.is_finished());
            stop.store(true, Ordering::Relaxed);
            join(a).unwrap();
            join(b).unwrap();
            let stats = pool.stats();
            assert!(stats.handoffs >= 3, "{stats:?}");
            pool.shutdown();
        },
    );
}

/// Threads arm other runners' timers (`TimerClock::Contention`) while those runners hand
/// off, retire and shut down: pools come and go under a stream of spawns from several
/// threads, and every task resolves with its result.
#[test]
fn arming_other_runners_timers_races_their_exit_safely() {
    in_child(
        "arming_other_runners_timers_races_their_exit_safely",
        || {
            for round in 0..20u64 {
                let pool = builder(2)
                    .quantum(Duration::from_micros(100))
                    .build()
                    .unwrap();
                let handles: Vec<_> = (0..3)
                    .map(|t| {
                        let handle = pool.handle();
                        std::thread::spawn(move || {
                            (0..300u64)
                                .map(|i| {
                                    let cpu = if i % 50 == 0 { 2 } else { 0 };
                                    handle.spawn(move || {
                                        spin_cpu(Duration::from_millis(cpu));
                                        round * 1000 + t * 300 + i
                                    })
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                for (t, spawner) in handles.into_iter().enumerate() {
                    for (i, h) in spawner.join().unwrap().into_iter().enumerate() {
                        assert_eq!(join(h).unwrap(), round * 1000 + t as u64 * 300 + i as u64);
                    }
                }
                pool.shutdown();
            }
        },
    );
}

#[test]
fn without_preemption_short_tasks_wait_for_the_long_one() {
    in_child(
        "without_preemption_short_tasks_wait_for_the_long_one",
        || {
            let pool = builder(1).preemption(false).build().unwrap();
            let long_done = Arc::new(AtomicBool::new(false));
            let long = {
                let long_done = long_done.clone();
                pool.spawn(move || {
                    let result = spin_for(Duration::from_millis(100));
                    long_done.store(true, Ordering::SeqCst);
                    result
                })
            };
            std::thread::sleep(Duration::from_millis(5));
            let short = {
                let long_done = long_done.clone();
                pool.spawn(move || long_done.load(Ordering::SeqCst))
            };
            assert!(join(short).unwrap(), "without preemption FCFS order holds");
            join(long).unwrap();
            let stats = pool.stats();
            assert_eq!((stats.ticks, stats.handoffs, stats.standbys), (0, 0, 0));
        },
    );
}

/// Many long tasks in a row: every one is handed off, carriers finish and go away, and
/// the standbys are replenished.
#[test]
fn carriers_retire_and_standbys_are_replenished() {
    in_child("carriers_retire_and_standbys_are_replenished", || {
        let pool = builder(1)
            .quantum(Duration::from_millis(1))
            .build()
            .unwrap();
        let longs: Vec<_> = (0..20)
            .map(|_| pool.spawn(|| spin_for(Duration::from_millis(8))))
            .collect();
        for long in longs {
            let (rounds, sum) = join(long).unwrap();
            assert_eq!(sum, check_spin(rounds));
        }
        let deadline = Instant::now() + common::HANG;
        loop {
            let stats = pool.stats();
            // A carrier leaves the carrier count before it decides to rejoin or retire.
            let settled = stats.carriers == 0
                && stats.standbys >= 1
                && stats.rejoined + stats.retired == stats.handoffs;
            if settled {
                assert!(stats.handoffs >= 10, "{stats:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "carriers never retired: {stats:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    });
}

/// Tasks that allocate and free constantly, preempted constantly: no deadlock (a handoff
/// inside `malloc` only moves the slot; the thread keeps its locks and finishes the call)
/// and the right results.
#[test]
fn allocation_heavy_tasks_under_preemption() {
    in_child("allocation_heavy_tasks_under_preemption", || {
        let pool = constantly_preempted(2);
        let work = |seed: u64| {
            let mut total = 0u64;
            for round in 0..300u64 {
                let mut map = std::collections::BTreeMap::new();
                for i in 0..64u64 {
                    map.insert(format!("k{seed}-{round}-{i}"), vec![i; (i % 17) as usize]);
                }
                total += map.values().map(|v| v.iter().sum::<u64>()).sum::<u64>();
                let text: String = map
                    .keys()
                    .take(8)
                    .map(String::len)
                    .map(|n| n.to_string())
                    .collect();
                total += text.len() as u64;
            }
            total
        };
        let expected: Vec<u64> = (0..32).map(work).collect();
        let tasks: Vec<_> = (0..32).map(|s| pool.spawn(move || work(s))).collect();
        let got: Vec<u64> = tasks.into_iter().map(|t| join(t).unwrap()).collect();
        assert_eq!(got, expected);
        let stats = pool.stats();
        assert!(stats.ticks >= 32 && stats.handoffs >= 4, "{stats:?}");
    });
}

/// Tasks that print constantly, preempted constantly (often inside std's stdout lock):
/// no deadlock, and every line arrives whole, exactly once.
#[test]
fn println_heavy_tasks_under_preemption() {
    const VAR: &str = "MICROSCHED_CHILD_TEST";
    const NAME: &str = "println_heavy_tasks_under_preemption";
    const TASKS: u64 = 16;
    const LINES: u64 = 3000;
    if std::env::var(VAR).as_deref() == Ok(NAME) {
        let pool = constantly_preempted(2);
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                pool.spawn(move || {
                    for l in 0..LINES {
                        println!(
                            "line task={t} n={l} payload={}",
                            "x".repeat((l % 50) as usize)
                        );
                    }
                })
            })
            .collect();
        for task in tasks {
            join(task).unwrap();
        }
        let stats = pool.stats();
        eprintln!("ticks={} handoffs={}", stats.ticks, stats.handoffs);
        assert!(stats.ticks >= 16, "{stats:?}");
        return;
    }
    let output = child_output(NAME, VAR);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut seen = std::collections::HashSet::new();
    // The harness prints "test <name> ... " with no newline before the first task line.
    for line in stdout
        .lines()
        .filter_map(|l| l.find("line task=").map(|at| &l[at..]))
    {
        let mut parts = line.split(' ');
        let _ = parts.next();
        let t: u64 = parts
            .next()
            .unwrap()
            .trim_start_matches("task=")
            .parse()
            .unwrap();
        let l: u64 = parts
            .next()
            .unwrap()
            .trim_start_matches("n=")
            .parse()
            .unwrap();
        assert_eq!(
            line,
            format!(
                "line task={t} n={l} payload={}",
                "x".repeat((l % 50) as usize)
            )
        );
        assert!(seen.insert((t, l)), "line printed twice: {line}");
    }
    assert_eq!(
        seen.len() as u64,
        TASKS * LINES,
        "lines lost; child stderr: {stderr}"
    );
}

/// Reads a field of /proc/self/status, such as "Threads".
fn proc_status(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// POSIX timers the process has (each line of /proc/self/timers starting with "ID:").
fn posix_timers() -> usize {
    std::fs::read_to_string("/proc/self/timers")
        .map(|t| t.lines().filter(|l| l.starts_with("ID:")).count())
        .unwrap_or(0)
}

/// Whether a thread of this process can undo SCHED_IDLE.
fn can_restore_priority() -> bool {
    std::thread::spawn(|| {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: changing the calling (scratch) thread's own policy.
        unsafe {
            assert_eq!(libc::sched_setscheduler(0, libc::SCHED_IDLE, &param), 0);
            libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) == 0
        }
    })
    .join()
    .unwrap()
}

/// Drops CAP_SYS_NICE from the calling thread (threads it creates inherit that).
fn drop_cap_sys_nice() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_SYS_NICE: u32 = 23;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data words, as the kernel expects.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(1 << CAP_SYS_NICE);
        data[0].permitted &= !(1 << CAP_SYS_NICE);
        data[0].inheritable &= !(1 << CAP_SYS_NICE);
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
            0
        );
    }
}

/// Many long tasks: every carrier either rejoins the standbys (it could restore its
/// priority) or exits (it could not), standbys are replenished, and threads and timers
/// return to where they were.
fn carrier_lifecycle(privileged: bool) {
    let pool = builder(2)
        .quantum(Duration::from_millis(1))
        .build()
        .unwrap();
    // Let the build's threads settle, then take the baseline.
    std::thread::sleep(Duration::from_millis(50));
    let threads_before = proc_status("Threads");
    let timers_before = posix_timers();
    for _round in 0..3 {
        let longs: Vec<_> = (0..40)
            .map(|i| pool.spawn(move || (i, spin_for(Duration::from_millis(4 + i % 3)))))
            .collect();
        for (i, long) in longs.into_iter().enumerate() {
            let (j, (rounds, sum)) = join(long).unwrap();
            assert_eq!((i as u64, sum), (j, check_spin(rounds)));
        }
    }
    let deadline = Instant::now() + common::HANG;
    // Settled: no carrier left, every slot stocked, every carrier accounted for, the
    // process back to its threads, and two timers per pool thread (the monitor has none;
    // carriers that exited took theirs with them).
    let stats = loop {
        let stats = pool.stats();
        let extra_standbys = stats
            .standbys
            .saturating_sub(stats.slots.len() as u64 * u64::from(microsched::DEFAULT_STANDBYS));
        let pool_threads = stats.slots.len() as u64 + stats.standbys;
        let settled = stats.carriers == 0
            && stats.slots.iter().all(|s| s.standbys >= 1)
            && stats.rejoined + stats.retired == stats.handoffs
            && proc_status("Threads") <= threads_before + extra_standbys
            && posix_timers() as u64 <= 2 * pool_threads;
        if settled {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "never settled (threads {} before, {} now; timers {} before, {} now): {stats:?}",
            threads_before,
            proc_status("Threads"),
            timers_before,
            posix_timers()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(stats.handoffs >= 10, "{stats:?}");
    if privileged {
        assert!(
            stats.rejoined > 0,
            "a privileged carrier should rejoin: {stats:?}"
        );
    } else {
        assert_eq!(
            stats.rejoined, 0,
            "an unprivileged carrier cannot undo SCHED_IDLE: {stats:?}"
        );
        assert_eq!(stats.retired, stats.handoffs, "{stats:?}");
        assert!(stats.standbys_started >= stats.handoffs, "{stats:?}");
    }
    pool.shutdown();
    assert_eq!(posix_timers(), 0, "a shut-down pool leaves no timers");
}

#[test]
fn carriers_without_the_privilege_to_restore_priority_retire() {
    in_child(
        "carriers_without_the_privilege_to_restore_priority_retire",
        || {
            drop_cap_sys_nice();
            assert!(!can_restore_priority(), "CAP_SYS_NICE is still there");
            carrier_lifecycle(false);
        },
    );
}

#[test]
fn carriers_with_the_privilege_to_restore_priority_rejoin() {
    in_child(
        "carriers_with_the_privilege_to_restore_priority_rejoin",
        || {
            // Most developers run unprivileged: then this is the unprivileged case again.
            carrier_lifecycle(can_restore_priority());
        },
    );
}

/// Shutdown while handed-off tasks are still running on their carriers: it waits for
/// them (and for everything queued), then every pool thread and timer is gone.
#[test]
fn shutdown_waits_for_carried_tasks_and_leaves_nothing_behind() {
    in_child(
        "shutdown_waits_for_carried_tasks_and_leaves_nothing_behind",
        || {
            // The first pool starts the process's waker thread (awaited handles' wakes),
            // which outlives every pool: started before the baseline.
            builder(1).build().unwrap().shutdown();
            let threads_before = proc_status("Threads");
            let pool = builder(2)
                .quantum(Duration::from_millis(1))
                .build()
                .unwrap();
            let longs: Vec<_> = (0..6)
                .map(|_| pool.spawn(|| spin_for(Duration::from_millis(60))))
                .collect();
            let shorts: Vec<_> = (0..200u64).map(|i| pool.spawn(move || i * 3)).collect();
            // Wait until some long tasks are carried, then shut down under them.
            let deadline = Instant::now() + common::HANG;
            while pool.stats().carriers == 0 {
                assert!(Instant::now() < deadline, "no handoff: {:?}", pool.stats());
                std::thread::sleep(Duration::from_millis(1));
            }
            pool.shutdown();
            for long in longs {
                let (rounds, sum) = join(long).unwrap();
                assert_eq!(sum, check_spin(rounds));
            }
            for (i, short) in shorts.into_iter().enumerate() {
                assert_eq!(join(short).unwrap(), i as u64 * 3);
            }
            let stats = pool.stats();
            assert_eq!((stats.completed, stats.carriers), (206, 0), "{stats:?}");
            assert_eq!(posix_timers(), 0, "timers left after shutdown");
            assert_eq!(
                proc_status("Threads"),
                threads_before,
                "threads left after shutdown"
            );
        },
    );
}

/// `shutdown_timeout` with a runaway on a carrier: the queue was served by the slot's new
/// runner, the runaway is detached and reported, and it finishes later on its own.
#[test]
fn shutdown_timeout_detaches_a_carried_runaway() {
    in_child("shutdown_timeout_detaches_a_carried_runaway", || {
        let pool = builder(1)
            .quantum(Duration::from_millis(1))
            .build()
            .unwrap();
        let release = Arc::new(AtomicBool::new(false));
        let runaway = {
            let release = release.clone();
            pool.spawn(move || {
                while !release.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                "released"
            })
        };
        let queued: Vec<_> = (0..50u64).map(|i| pool.spawn(move || i)).collect();
        for (i, h) in queued.into_iter().enumerate() {
            assert_eq!(join(h).unwrap(), i as u64, "served by the new runner");
        }
        let err = pool
            .shutdown_timeout(Duration::from_millis(50))
            .unwrap_err();
        assert_eq!(err.busy_runners(), 1);
        assert!(!runaway.is_finished());
        release.store(true, Ordering::Release);
        assert_eq!(join(runaway).unwrap(), "released");
        assert!(pool.stats().handoffs >= 1);
    });
}

/// Carriers whose tasks end rejoin the standbys (up to four times the target), so the
/// next burst of handoffs reuses them instead of starting threads; the ones past the
/// target exit after a second without a handoff, and the reserve settles back to its
/// target.
#[test]
fn spare_standbys_are_reused_then_retire_when_idle() {
    in_child("spare_standbys_are_reused_then_retire_when_idle", || {
        let pool = builder(1).standbys(1).build().unwrap();
        let burst = |pool: &microsched::Pool| {
            // Eight 30 ms tasks on one slot: each is handed off behind the next.
            let handles: Vec<_> = (0..8)
                .map(|_| pool.spawn(|| spin_cpu(Duration::from_millis(30))))
                .collect();
            for h in handles {
                assert!(join(h).unwrap() > 0);
            }
        };
        burst(&pool);
        let after_first = pool.stats();
        assert!(after_first.handoffs >= 4, "{after_first:?}");
        // The carriers rejoin: more than twice the target are parked now (waiting a moment
        // for the last carriers to get there).
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.stats().standbys < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(pool.stats().standbys >= 3, "{:?}", pool.stats());
        // A second burst at once reuses them: fewer threads started than handoffs made.
        burst(&pool);
        let after_second = pool.stats();
        let handoffs = after_second.handoffs - after_first.handoffs;
        let started = after_second.standbys_started - after_first.standbys_started;
        assert!(handoffs >= 4, "{after_second:?}");
        assert!(
            started < handoffs,
            "{started} started for {handoffs} handoffs"
        );
        // Idle: the spares past the target exit within a few seconds.
        let deadline = Instant::now() + Duration::from_secs(20);
        while pool.stats().standbys > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(pool.stats().standbys, 1, "{:?}", pool.stats());
        pool.shutdown();
    });
}
