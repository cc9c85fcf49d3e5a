//! Runaway tasks of every kind the kill has to deal with, and the outcome each should get.
#![allow(dead_code)] // Each example uses what it needs of these.
//! Shared by `examples/runaway.rs` and `examples/killstorm.rs`.

use std::hint::black_box;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use microsched::{checkpoint, Budget, FreezeGuard, Handle, JoinHandle, KillHow};

/// The kinds that are abandoned (`signalblock`, `display`, `guard`) stop after this long
/// (ms), so an abandoned thread shows what happens when it does: its value is dropped
/// there and the thread exits. (The pool has resolved their joins long before.)
static GIVE_UP_MS: AtomicU64 = AtomicU64::new(500);
/// Of every millisecond they run, how many µs they spin (the rest they sleep).
static BUSY_US: AtomicU64 = AtomicU64::new(1000);

/// How long the abandoned kinds run, and how busy they are: an abandoned thread runs on,
/// and thousands of them spinning flat out would leave no idle time at all on the cores
/// to the carriers of the other runaways.
pub fn configure(give_up: Duration, busy_us_per_ms: u64) {
    GIVE_UP_MS.store(give_up.as_millis() as u64, Ordering::Relaxed);
    BUSY_US.store(busy_us_per_ms.min(1000), Ordering::Relaxed);
}

/// How long the abandoned kinds run.
pub fn give_up_after() -> Duration {
    Duration::from_millis(GIVE_UP_MS.load(Ordering::Relaxed))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Loop,
    Alloc,
    Print,
    Format,
    Recursion,
    Mutex,
    Checkpoint,
    Sleep,
    Unwinding,
    Cancel,
    Io,
    Deep,
    SignalBlock,
    Display,
    Guard,
}

pub const KINDS: [Kind; 15] = [
    Kind::Loop,
    Kind::Alloc,
    Kind::Print,
    Kind::Format,
    Kind::Recursion,
    Kind::Mutex,
    Kind::Checkpoint,
    Kind::Sleep,
    Kind::Unwinding,
    Kind::Cancel,
    Kind::Io,
    Kind::Deep,
    Kind::SignalBlock,
    Kind::Display,
    Kind::Guard,
];

impl Kind {
    pub fn name(self) -> String {
        format!("{self:?}").to_lowercase()
    }

    /// What it does, for the tables.
    pub fn what(self) -> &'static str {
        match self {
            Kind::Loop => "`loop {}`",
            Kind::Alloc => "allocates and frees in a loop (mostly inside malloc)",
            Kind::Print => "`print!` of a slow, empty `Display` (inside stdout's lock)",
            Kind::Format => "`format!` in a loop",
            Kind::Recursion => "recursion without end",
            Kind::Mutex => "holds a shared `Mutex` in a loop with a `checkpoint()`",
            Kind::Checkpoint => "a loop with a `checkpoint()` and a value to drop",
            Kind::Sleep => "sleeps for an hour",
            Kind::Unwinding => "panics, then loops in a destructor",
            Kind::Cancel => "`loop {}` with no limit, cancelled through its handle",
            Kind::Io => "blocked reading a socket nobody writes to",
            Kind::Deep => "`loop {}` 2,000 frames deep",
            Kind::SignalBlock => "blocks the pool's signal, then loops",
            Kind::Display => "`println!` of a `Display` that loops (holds stdout's lock)",
            Kind::Guard => "loops holding a `FreezeGuard`",
        }
    }

    /// The outcome it should get, and why.
    pub fn expected(self) -> (KillHow, &'static str) {
        match self {
            Kind::Mutex | Kind::Checkpoint => (KillHow::Cancelled, "at its checkpoint"),
            Kind::Recursion => (KillHow::Frozen, "stack overflow"),
            Kind::Print => (KillHow::Frozen, "as it leaves the lock (or waiting for it)"),
            Kind::Alloc => (KillHow::Frozen, "outside malloc"),
            Kind::Unwinding => (KillHow::Frozen, "in its destructor, after the deferral"),
            Kind::Io => (KillHow::Frozen, "in the syscall: it holds nothing"),
            Kind::SignalBlock => (KillHow::Abandoned, "its handler never runs"),
            Kind::Display => (KillHow::Abandoned, "it never leaves stdout's lock"),
            Kind::Guard => (KillHow::Abandoned, "it never leaves the no-freeze section"),
            _ => (KillHow::Frozen, ""),
        }
    }
}

/// Formats to nothing, slowly: `print!` holds std's stdout lock while it runs.
struct Quiet;

impl std::fmt::Display for Quiet {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut x = 1u64;
        for i in 0..20_000u64 {
            x = black_box(x.rotate_left(7) ^ i);
        }
        Ok(())
    }
}

/// Formats to nothing, for [`give_up_after`]: a runaway inside `println!`.
struct Forever;

impl std::fmt::Display for Forever {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        run_on();
        Ok(())
    }
}

/// Spins (and sleeps, if [`configure`]d so) for [`give_up_after`].
fn run_on() -> u64 {
    let until = Instant::now() + give_up_after();
    let busy = Duration::from_micros(BUSY_US.load(Ordering::Relaxed));
    let mut x = 0u64;
    while Instant::now() < until {
        let spin_until = Instant::now() + busy;
        while Instant::now() < spin_until {
            for _ in 0..100 {
                x = black_box(x.wrapping_add(1));
            }
        }
        if busy < Duration::from_millis(1) {
            std::thread::sleep(Duration::from_millis(1) - busy);
        }
    }
    x
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 32]);
    recurse(black_box(depth + 1)).wrapping_add(frame[3])
}

#[inline(never)]
fn deep(depth: u32) -> u64 {
    if depth == 0 {
        #[allow(clippy::empty_loop)]
        loop {}
    }
    deep(black_box(depth - 1)).wrapping_add(u64::from(depth))
}

struct Dropped(Arc<AtomicUsize>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Loops forever when dropped (during the unwinding of a panic).
struct SlowDrop;

impl Drop for SlowDrop {
    fn drop(&mut self) {
        let mut x = 0u64;
        loop {
            x = black_box(x.wrapping_add(1));
            checkpoint(); // does nothing while unwinding: a second unwind would abort
        }
    }
}

/// What the runaways share: counts of what their kills left behind.
pub struct Shared {
    pub dropped: Arc<AtomicUsize>,
    /// The `mutex` kind's mutex: each holder is cancelled and poisons it; the next task to
    /// lock it after that sees the poison.
    pub mutex: Arc<Mutex<u64>>,
    pub poisoned_seen: AtomicUsize,
    /// The far ends of the `io` kind's sockets, kept open so its reads block.
    peers: Mutex<Vec<UnixStream>>,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            dropped: Arc::new(AtomicUsize::new(0)),
            mutex: Arc::new(Mutex::new(0)),
            poisoned_seen: AtomicUsize::new(0),
            peers: Mutex::new(Vec::new()),
        })
    }

    /// After a `mutex` runaway's join: a later task that locks the mutex finds it poisoned.
    /// (With a budget: if a holder was frozen or abandoned instead, the mutex stays locked
    /// and this task waits on it until its own kill.)
    pub fn check_poison(&self, pool: &Handle) {
        let m = self.mutex.clone();
        let check = pool.spawn_with(Budget::wall(Duration::from_millis(200)), move || {
            m.lock().is_err()
        });
        if matches!(check.join(), Ok(true)) {
            self.poisoned_seen.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Spawns a runaway of `kind` with `budget` (the kinds that need another say so below).
pub fn spawn(pool: &Handle, kind: Kind, budget: Budget, shared: &Arc<Shared>) -> JoinHandle<u64> {
    let grace = budget.grace_period();
    match kind {
        Kind::Loop => pool.spawn_with(budget, || {
            #[allow(clippy::empty_loop)]
            loop {}
        }),
        Kind::Alloc => pool.spawn_with(budget, || {
            let mut n = 0u64;
            loop {
                let v = vec![n as u8; black_box(1024)];
                n = n.wrapping_add(u64::from(v[7]) + 1);
            }
        }),
        Kind::Print => pool.spawn_with(budget, || loop {
            print!("{Quiet}");
        }),
        Kind::Format => pool.spawn_with(budget, || {
            let mut i = 0u64;
            loop {
                black_box(format!("{i:>12} {:?}", i.to_be_bytes()));
                i += 1;
            }
        }),
        // A CPU budget it cannot reach first: the overflow comes in a few ms.
        Kind::Recursion => pool.spawn_with(Budget::cpu(Duration::from_secs(10)), || recurse(0)),
        Kind::Mutex => {
            let m = shared.mutex.clone();
            pool.spawn_with(budget, move || {
                let mut guard = m.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    *guard += 1;
                    checkpoint();
                }
            })
        }
        Kind::Checkpoint => {
            let dropped = shared.dropped.clone();
            pool.spawn_with(budget, move || {
                let _value = Dropped(dropped);
                let mut x = 0u64;
                loop {
                    x = black_box(x.wrapping_add(1));
                    checkpoint();
                }
            })
        }
        Kind::Sleep => {
            pool.spawn_with(Budget::wall(Duration::from_millis(20)).grace(grace), || {
                std::thread::sleep(Duration::from_secs(3600));
                0
            })
        }
        Kind::Unwinding => pool.spawn_with(budget, || {
            let _slow = SlowDrop;
            panic!("a runaway that panics and then never finishes unwinding");
        }),
        Kind::Cancel => {
            let started = Arc::new(AtomicBool::new(false));
            let s = started.clone();
            // No budget: only the grace period, the same as the others'.
            let h = pool.spawn_with(Budget::unlimited().grace(grace), move || {
                s.store(true, Ordering::SeqCst);
                #[allow(clippy::empty_loop)]
                loop {}
            });
            while !started.load(Ordering::SeqCst) && !h.is_finished() {
                std::thread::yield_now();
            }
            h.cancel();
            h
        }
        Kind::Io => {
            let (mut ours, theirs) = UnixStream::pair().expect("a socket pair");
            shared.peers.lock().unwrap().push(theirs);
            pool.spawn_with(
                Budget::wall(Duration::from_millis(20)).grace(grace),
                move || {
                    let mut buf = [0u8; 64];
                    ours.read(&mut buf).map_or(0, |n| n as u64)
                },
            )
        }
        Kind::Deep => pool.spawn_with(budget, || deep(2000)),
        Kind::SignalBlock => pool.spawn_with(budget, || {
            // SAFETY: `set` is initialised by `sigemptyset` before use; blocking a signal
            // on the calling thread is what safe wrappers (nix's `SigSet::thread_block`)
            // do too.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGALRM);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            }
            run_on()
        }),
        Kind::Display => pool.spawn_with(budget, || {
            println!("{Forever}");
            0
        }),
        Kind::Guard => pool.spawn_with(budget, || {
            let _guard = FreezeGuard::new();
            run_on()
        }),
    }
}

/// Keeps the panic message of the `unwinding` kind off the terminal.
pub fn quiet_unwinding_panics() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let ours = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|s| s.starts_with("a runaway"));
        if !ours {
            default_hook(info);
        }
    }));
}

/// The `q` quantile of sorted `values` (0 if empty).
pub fn quantile(values: &[u128], q: f64) -> u128 {
    if values.is_empty() {
        return 0;
    }
    values[((values.len() as f64 * q) as usize).min(values.len() - 1)]
}
