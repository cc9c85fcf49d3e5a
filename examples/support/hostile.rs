//! `killstorm --hostile`: freezes while the rest of the process uses every process-wide
//! facility of std's at once. Nothing a kill does may take the process down.
//!
//! The storm runs in a child process (this program, re-run), so that an abort or a hang
//! is seen from outside and reported rather than taking the report with it. In the child,
//! four threads loop, for as long as the storm lasts, over: a panic caught (through the
//! panic hook's lock), a backtrace captured and now and then printed (std's backtrace
//! lock), `print!` and `eprint!` (stdout's and stderr's locks), the environment read and
//! written (its lock), a process spawned (the environment's read lock around `fork`), and
//! a service looked up in a cache of one (a `dlopen` and a `dlclose` each time). Meanwhile
//! runaways of ten kinds, each doing one of those same things in a loop (and three more:
//! unwinding out of `print!` with `resume_unwind`, writing through a `StdoutLock` guard,
//! printing 500 frames deep), are killed
//! until at least 1,000 have been frozen, with good tasks checked in between. Every join
//! has a deadline; so does every facility thread's progress.
//!
//! The parent waits for the child (ten minutes at most), and prints
//! `SUMMARY hostile freezes=<n> hung=<h> aborted=<a> panics_caught=<p> prints=<q>`,
//! `hung` counting joins and facility threads that stopped making progress (and 1 if the
//! child had to be killed), `aborted` 1 if the child died of a signal. It exits with an
//! error unless `hung=0 aborted=0` and 1,000 freezes were reached.

use std::fmt;
use std::hint::black_box;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use microsched::{Budget, JoinError, Pool, ServiceCache};

#[path = "services.rs"]
mod services;

const CHILD_VAR: &str = "MICROSCHED_HOSTILE_CHILD";
/// Freezes to reach.
const FREEZES: u64 = 1_000;
/// Runaways at most (the abandoned ones do not count).
const MAX_RUNAWAYS: u64 = 5_000;
/// A join unresolved this long is hung.
const JOIN: Duration = Duration::from_secs(10);
/// A facility thread that makes no progress this long is hung.
const STALL: Duration = Duration::from_secs(20);
/// The parent's limit for the whole child.
const CHILD_LIMIT: Duration = Duration::from_secs(600);
/// A runaway that was not frozen or cancelled returns by itself after this long.
const RUN_ON: Duration = Duration::from_secs(2);
/// Runaways in flight at once.
const BATCH: usize = 8;

/// A panic payload the storm raises on purpose; the hook skips its message.
struct Quiet;

/// The parent: runs the storm in a child and reports.
pub fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os(CHILD_VAR).is_some() {
        return child();
    }
    let exe = std::env::current_exe()?;
    let mut process = Command::new(exe)
        .arg("--hostile")
        .env(CHILD_VAR, "1")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdout = process.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let started = Instant::now();
    let mut killed = false;
    let status = loop {
        if let Some(status) = process.try_wait()? {
            break status;
        }
        if started.elapsed() > CHILD_LIMIT {
            let _ = process.kill();
            killed = true;
            break process.wait()?;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap_or_default();
    let field = |name: &str| -> u64 {
        out.lines()
            .filter(|l| l.starts_with("HOSTILE "))
            .flat_map(|l| l.split_whitespace())
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    use std::os::unix::process::ExitStatusExt;
    let aborted = u64::from(status.signal().is_some() && !killed);
    let hung = field("hung") + u64::from(killed);
    let freezes = field("freezes");
    for line in out.lines().filter(|l| !l.starts_with("HOSTILE ")) {
        println!("{line}");
    }
    println!(
        "SUMMARY hostile freezes={freezes} hung={hung} aborted={aborted} panics_caught={} prints={}",
        field("panics_caught"),
        field("prints"),
    );
    if !status.success() && aborted == 0 && hung == 0 {
        return Err(format!("the storm's child failed: {status}").into());
    }
    if hung != 0 || aborted != 0 || freezes < FREEZES {
        return Err(format!(
            "hung={hung} aborted={aborted} freezes={freezes} (wanted hung=0 aborted=0 freezes>={FREEZES})"
        )
        .into());
    }
    Ok(())
}

/// The facility threads' counts and progress.
#[derive(Default)]
struct Counts {
    panics_caught: AtomicU64,
    prints: AtomicU64,
    backtraces: AtomicU64,
    env: AtomicU64,
    spawns: AtomicU64,
    lookups: AtomicU64,
}

/// Prints nothing: `print!` still takes stdout's lock.
struct Nothing;

impl fmt::Display for Nothing {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        Ok(())
    }
}

/// Spins a little inside `print!`, then unwinds out of it with `resume_unwind` (no hook):
/// the unwind goes through a frame whose return a kill may have redirected.
struct UnwindInside;

impl fmt::Display for UnwindInside {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        let until = Instant::now() + Duration::from_micros(200);
        while Instant::now() < until {
            black_box(0u64);
        }
        std::panic::resume_unwind(Box::new(Quiet))
    }
}

/// Recurses `depth` frames, then runs `f`.
#[inline(never)]
fn deep(depth: u32, f: &mut dyn FnMut()) {
    if depth == 0 {
        f();
    } else {
        deep(black_box(depth - 1), f);
        black_box(depth);
    }
}

/// The runaways: each loops over one of the facilities, until [`RUN_ON`].
#[derive(Clone, Copy, Debug)]
enum Runaway {
    Spin,
    Print,
    Backtrace,
    Env,
    Spawn,
    PanicCatch,
    Lookup,
    UnwindThroughPrint,
    StdoutGuard,
    DeepPrint,
}

const RUNAWAYS: [Runaway; 10] = [
    Runaway::Spin,
    Runaway::Print,
    Runaway::Backtrace,
    Runaway::Env,
    Runaway::Spawn,
    Runaway::PanicCatch,
    Runaway::Lookup,
    Runaway::UnwindThroughPrint,
    Runaway::StdoutGuard,
    Runaway::DeepPrint,
];

fn run_away(kind: Runaway, cache: &ServiceCache) -> u64 {
    let until = Instant::now() + RUN_ON;
    let mut n = 0u64;
    while Instant::now() < until {
        match kind {
            Runaway::Spin => {
                for _ in 0..1000 {
                    n = black_box(n.wrapping_add(1));
                }
            }
            Runaway::Print => print!("{Nothing}"),
            Runaway::Backtrace => {
                n += black_box(std::backtrace::Backtrace::force_capture().to_string().len()) as u64
            }
            Runaway::Env => {
                std::env::set_var("MICROSCHED_HOSTILE_RUNAWAY", n.to_string());
                n += std::env::vars_os().count() as u64;
            }
            Runaway::Spawn => {
                if let Ok(status) = Command::new("true").status() {
                    n += u64::from(status.success());
                }
            }
            Runaway::PanicCatch => {
                let caught = std::panic::catch_unwind(|| std::panic::panic_any(Quiet));
                n += u64::from(caught.is_err());
            }
            Runaway::Lookup => {
                let name = if n % 2 == 0 { "svc_hash" } else { "svc_json" };
                n += u64::from(cache.get(name).is_ok()) + 1;
            }
            Runaway::UnwindThroughPrint => {
                let caught = std::panic::catch_unwind(|| print!("{UnwindInside}"));
                n += u64::from(caught.is_err());
            }
            Runaway::StdoutGuard => {
                use std::io::Write;
                let _ = write!(std::io::stdout().lock(), "{Nothing}");
                n += 1;
            }
            Runaway::DeepPrint => deep(500, &mut || {
                print!("{Nothing}");
                n += 1;
            }),
        }
    }
    n
}

/// One facility thread's loop, until `stop`.
fn use_everything(
    t: usize,
    cache: &ServiceCache,
    counts: &Counts,
    progress: &AtomicU64,
    stop: &AtomicBool,
) {
    let var = format!("MICROSCHED_HOSTILE_{t}");
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        if std::panic::catch_unwind(|| std::panic::panic_any(Quiet)).is_err() {
            counts.panics_caught.fetch_add(1, Ordering::Relaxed);
        }
        if i % 4000 == 0 {
            // Through the default hook (its message on stderr, under the backtrace lock).
            let caught =
                std::panic::catch_unwind(|| panic!("hostile: a panic through the default hook"));
            if caught.is_err() {
                counts.panics_caught.fetch_add(1, Ordering::Relaxed);
            }
        }
        print!("{Nothing}");
        eprint!("{Nothing}");
        counts.prints.fetch_add(2, Ordering::Relaxed);
        if i % 20 == 0 {
            let trace = std::backtrace::Backtrace::force_capture();
            if i % 200 == 0 {
                black_box(trace.to_string());
            }
            counts.backtraces.fetch_add(1, Ordering::Relaxed);
        }
        if i % 5 == 0 {
            std::env::set_var(&var, i.to_string());
            assert_eq!(std::env::var(&var).ok(), Some(i.to_string()));
            black_box(std::env::vars_os().count());
            counts.env.fetch_add(1, Ordering::Relaxed);
        }
        if i % 100 == 0 {
            let status = Command::new("true").status().expect("spawn `true`");
            assert!(status.success());
            counts.spawns.fetch_add(1, Ordering::Relaxed);
        }
        if i % 25 == 0 {
            let name = if i % 50 == 0 { "svc_hash" } else { "svc_json" };
            cache.get(name).expect("look a service up");
            counts.lookups.fetch_add(1, Ordering::Relaxed);
        }
        progress.store(i, Ordering::Relaxed);
    }
}

/// Writes `line` to fd 1 without std's stdout lock (an abandoned runaway may hold it).
fn raw_println(line: &str) {
    for part in [line, "\n"] {
        // SAFETY: a valid buffer of `part.len()` bytes.
        unsafe { libc::write(1, part.as_ptr().cast(), part.len()) };
    }
}

fn child() -> Result<(), Box<dyn std::error::Error>> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.payload().is::<Quiet>() {
            previous(info);
        }
    }));
    let dir = services::build(false)?;
    // SAFETY: the directory holds the example services.
    let cache = Arc::new(unsafe { ServiceCache::new(&dir, 1) });
    let pool = Pool::builder()
        .workers(2)
        .max_frozen(4 * MAX_RUNAWAYS as usize)
        .max_freeze_deferral(Duration::from_millis(50))
        .build()?;
    let budget = Budget::cpu(Duration::from_millis(2))
        .and_wall(Duration::from_millis(20))
        .grace(Duration::from_millis(2));
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
    let users: Vec<_> = (0..4)
        .map(|t| {
            let (cache, counts, stop, progress) = (
                cache.clone(),
                counts.clone(),
                stop.clone(),
                progress.clone(),
            );
            std::thread::spawn(move || use_everything(t, &cache, &counts, &progress[t], &stop))
        })
        .collect();
    let mut hung = 0u64;
    let mut stalled = [(0u64, Instant::now()); 4];
    let mut runaways = 0u64;
    let mut good_ok = 0u64;
    let mut good = 0u64;
    let mut unexpected = 0u64;
    let started = Instant::now();
    while pool.stats().frozen < FREEZES && runaways < MAX_RUNAWAYS && hung == 0 {
        let batch: Vec<_> = (0..BATCH)
            .map(|i| {
                let kind = RUNAWAYS[(runaways as usize + i) % RUNAWAYS.len()];
                let cache = cache.clone();
                pool.spawn_with(budget, move || run_away(kind, &cache))
            })
            .collect();
        runaways += BATCH as u64;
        let goods: Vec<_> = (0..16u64)
            .map(|n| (n, pool.spawn(move || n * 7 + 1)))
            .collect();
        for h in batch {
            match h.join_timeout(JOIN) {
                Err(_) => hung += 1,
                Ok(Err(JoinError::Killed(_))) => {}
                // Returned by itself (a kill that came too late to matter is fine too).
                Ok(Ok(_)) => {}
                Ok(Err(_)) => unexpected += 1,
            }
        }
        for (n, h) in goods {
            good += 1;
            match h.join_timeout(JOIN) {
                Ok(Ok(v)) if v == n * 7 + 1 => good_ok += 1,
                Err(_) => hung += 1,
                _ => {}
            }
        }
        // Every facility thread still makes progress.
        for (t, p) in progress.iter().enumerate() {
            let now = p.load(Ordering::Relaxed);
            if now != stalled[t].0 {
                stalled[t] = (now, Instant::now());
            } else if stalled[t].1.elapsed() > STALL {
                hung += 1;
                stalled[t].1 = Instant::now();
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + STALL;
    for user in users {
        while !user.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if user.is_finished() {
            if user.join().is_err() {
                unexpected += 1;
            }
        } else {
            hung += 1;
        }
    }
    let stats = pool.stats();
    raw_println(&format!(
        "hostile: {runaways} runaways in {:.1} s: {} frozen, {} cancelled, {} abandoned; \
         good {good_ok}/{good}; facility uses: {} backtraces, {} environment, {} spawns, \
         {} service lookups; unexpected outcomes {unexpected}",
        started.elapsed().as_secs_f64(),
        stats.frozen,
        stats.cancelled,
        stats.abandoned,
        counts.backtraces.load(Ordering::Relaxed),
        counts.env.load(Ordering::Relaxed),
        counts.spawns.load(Ordering::Relaxed),
        counts.lookups.load(Ordering::Relaxed),
    ));
    if good_ok != good || unexpected != 0 {
        raw_println("hostile: FAILED: a good task's result was wrong, or an outcome unexpected");
    }
    raw_println(&format!(
        "HOSTILE freezes={} hung={hung} panics_caught={} prints={}",
        stats.frozen,
        counts.panics_caught.load(Ordering::Relaxed),
        counts.prints.load(Ordering::Relaxed),
    ));
    let code = i32::from(good_ok != good || unexpected != 0);
    if hung != 0 && std::env::var_os("MICROSCHED_HOSTILE_DEBUG").is_some() {
        raw_println("hostile: hung; waiting for a debugger");
        std::thread::sleep(Duration::from_secs(3600));
    }
    // Not a normal exit: abandoned runaways may still be running (for `RUN_ON`), and
    // the pool's drop would wait for them.
    // SAFETY: ends the process at once; everything worth keeping is written.
    unsafe { libc::_exit(code) }
}
