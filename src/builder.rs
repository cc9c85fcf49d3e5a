//! `Pool::builder()`: settings, their checks, and starting the runners.

use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use crate::error::BuildError;
use crate::pool::{self, Pool, Shared};
use crate::sys;

/// The smallest runner stack accepted: the runtime's own frames plus `catch_unwind` and a
/// panic's formatting need a few pages; below this, ordinary tasks would overflow.
pub const MIN_STACK_SIZE: usize = 64 * 1024;

/// The most workers a pool may have.
pub const MAX_WORKERS: usize = 1024;

/// The longest idle spin accepted.
pub const MAX_SPIN: Duration = Duration::from_millis(10);

/// How long an idle runner spins, looking for work, before it sleeps.
///
/// Waking a sleeping runner costs 40–80 µs on the 2-vCPU VMs this was tuned on (an idle
/// vCPU must be woken), about what spawning a thread costs, while taking a task from a
/// spinning runner costs well under a microsecond. Spinning yields the core every few
/// rounds, so a spawner that shares the core still runs. See `benches/dispatch.rs` for the
/// measurement behind the value.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(100);

/// Settings for a [`Pool`]. Every setting is checked by [`build`](Builder::build), which
/// returns a [`BuildError`] saying what to change rather than panicking.
#[derive(Debug, Clone)]
#[must_use = "a Builder does nothing until build() is called"]
pub struct Builder {
    workers: Option<usize>,
    cores: Option<Vec<usize>>,
    pin: bool,
    name: String,
    stack_size: Option<usize>,
    spin: Duration,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// The defaults: pinning on, one worker per allowed core, threads named
    /// `microsched-<slot>`, std's default stack size, [`DEFAULT_SPIN`].
    pub fn new() -> Builder {
        Builder {
            workers: None,
            cores: None,
            pin: true,
            name: "microsched".to_owned(),
            stack_size: None,
            spin: DEFAULT_SPIN,
        }
    }

    /// The number of slots, each served by one runner thread. Default: one per core in
    /// [`cores`](Builder::cores). With pinning on, at most one per core.
    pub fn workers(mut self, workers: usize) -> Builder {
        self.workers = Some(workers);
        self
    }

    /// The cores to run on, by CPU index. Default: every core this thread may run on
    /// (its affinity mask, so `taskset` and cgroup cpusets are respected). With pinning,
    /// slot `i` is pinned to the `i`-th core of the list; without, every runner may run on
    /// any core of the list.
    pub fn cores(mut self, cores: impl IntoIterator<Item = usize>) -> Builder {
        self.cores = Some(cores.into_iter().collect());
        self
    }

    /// Pin each runner to its own core (default `true`). Pinning is what lets a slot own
    /// a core; turn it off to share cores with other work or to run more workers than cores.
    pub fn pin(mut self, pin: bool) -> Builder {
        self.pin = pin;
        self
    }

    /// The prefix of runner thread names; the slot index is appended (`prefix-0`, ...).
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Builder {
        self.name = prefix.into();
        self
    }

    /// The stack size of runner threads, in bytes; at least [`MIN_STACK_SIZE`]. Tasks run on
    /// this stack.
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack_size = Some(bytes);
        self
    }

    /// How long an idle runner spins before it sleeps (default [`DEFAULT_SPIN`], at most
    /// [`MAX_SPIN`]). Zero makes runners sleep at once: lowest CPU use, highest wake-up
    /// latency.
    pub fn spin(mut self, spin: Duration) -> Builder {
        self.spin = spin;
        self
    }

    /// Checks the settings, starts the runners, and returns the pool once every runner is
    /// running (pinned, if pinning is on).
    pub fn build(self) -> Result<Pool, BuildError> {
        let affinities = self.check()?;
        let shared = Arc::new(Shared::new(
            affinities
                .iter()
                .map(|a| {
                    if self.pin {
                        a.as_ref().map(|c| c[0])
                    } else {
                        None
                    }
                })
                .collect(),
            self.spin,
        ));
        let workers = affinities.len();
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut threads = Vec::with_capacity(workers);
        let mut failure = None;
        for (index, affinity) in affinities.into_iter().enumerate() {
            let mut builder = thread::Builder::new().name(format!("{}-{index}", self.name));
            if let Some(bytes) = self.stack_size {
                builder = builder.stack_size(bytes);
            }
            match pool::start_runner(&shared, index, builder, affinity, ready_tx.clone()) {
                Ok(thread) => threads.push(thread),
                Err(source) => {
                    // The runners not started will never exit: account for them here.
                    for _ in index..workers {
                        shared.runner_exited();
                    }
                    failure = Some(BuildError::Os {
                        what: "spawn a runner thread",
                        source,
                    });
                    break;
                }
            }
        }
        drop(ready_tx);
        // Each started runner reports once; a runner that failed to pin exits at once.
        for pinned in ready_rx.iter() {
            if let (Err(source), None) = (pinned, &failure) {
                failure = Some(BuildError::Os {
                    what: "pin a runner thread to its core",
                    source,
                });
            }
        }
        let pool = Pool::from_parts(shared, threads);
        match failure {
            None => Ok(pool),
            Some(err) => {
                pool.shutdown();
                Err(err)
            }
        }
    }

    /// Validates the settings; returns each slot's affinity (None: leave it alone).
    fn check(&self) -> Result<Vec<Option<Vec<usize>>>, BuildError> {
        if self.name.contains('\0') {
            return Err(BuildError::InvalidThreadName);
        }
        if let Some(requested) = self.stack_size {
            if requested < MIN_STACK_SIZE {
                return Err(BuildError::StackTooSmall {
                    requested,
                    minimum: MIN_STACK_SIZE,
                });
            }
        }
        if self.spin > MAX_SPIN {
            return Err(BuildError::SpinTooLong {
                requested: self.spin,
                maximum: MAX_SPIN,
            });
        }
        let allowed = sys::allowed_cpus().map_err(|source| BuildError::Os {
            what: "read this thread's CPU affinity mask",
            source,
        })?;
        let cores = match &self.cores {
            None => allowed.clone(),
            Some(cores) => {
                if cores.is_empty() {
                    return Err(BuildError::NoCores);
                }
                for (i, &core) in cores.iter().enumerate() {
                    if cores[..i].contains(&core) {
                        return Err(BuildError::DuplicateCore(core));
                    }
                    if !allowed.contains(&core) {
                        return Err(BuildError::CoreNotAllowed {
                            core,
                            allowed: allowed.clone(),
                        });
                    }
                }
                cores.clone()
            }
        };
        let workers = self.workers.unwrap_or(cores.len());
        if workers == 0 {
            return Err(BuildError::NoWorkers);
        }
        if workers > MAX_WORKERS {
            return Err(BuildError::WorkerLimit {
                workers,
                limit: MAX_WORKERS,
            });
        }
        if self.pin && workers > cores.len() {
            return Err(BuildError::TooManyWorkers {
                workers,
                cores: cores.len(),
            });
        }
        Ok((0..workers)
            .map(|i| {
                if self.pin {
                    Some(vec![cores[i]])
                } else if self.cores.is_some() {
                    Some(cores.clone())
                } else {
                    None
                }
            })
            .collect())
    }
}
