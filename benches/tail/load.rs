//! The load model of `benches/tail.rs`, with no dependency on microsched or any peer, so a
//! report command can share it: workloads, precomputed Poisson arrivals, calibrated work,
//! and latency percentiles.

use std::hint::black_box;

/// One class of requests: its share of arrivals and its service time.
#[derive(Debug, Clone, Copy)]
pub struct Class {
    pub name: &'static str,
    pub share: f64,
    pub service_us: f64,
}

/// A mix of request classes, and the short-class p99 it must meet (fixed before any run).
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: &'static str,
    pub classes: Vec<Class>,
    /// The latency target for the first (short) class's p99, in µs.
    pub short_p99_target_us: f64,
    /// Service times drawn from an exponential distribution around the class's mean,
    /// rather than fixed.
    pub exponential: bool,
}

impl Workload {
    /// 99.5 % 50 µs / 0.5 % 50 ms: the long class carries 83 % of the work, as in the
    /// Shinjuku and Skyloft bimodal workloads (scaled to a 2-vCPU machine).
    pub fn bimodal() -> Workload {
        Workload {
            name: "bimodal 99.5% 50us / 0.5% 50ms",
            classes: vec![
                Class {
                    name: "short",
                    share: 0.995,
                    service_us: 50.0,
                },
                Class {
                    name: "long",
                    share: 0.005,
                    service_us: 50_000.0,
                },
            ],
            short_p99_target_us: 10_000.0,
            exponential: false,
        }
    }

    /// 50 % 10 µs / 50 % 1 ms.
    pub fn fifty_fifty() -> Workload {
        Workload {
            name: "50/50 10us / 1ms",
            classes: vec![
                Class {
                    name: "short",
                    share: 0.5,
                    service_us: 10.0,
                },
                Class {
                    name: "long",
                    share: 0.5,
                    service_us: 1_000.0,
                },
            ],
            short_p99_target_us: 5_000.0,
            exponential: false,
        }
    }

    /// Exponential service times, mean 100 µs (one class; "short" is every request).
    pub fn exponential() -> Workload {
        Workload {
            name: "exponential mean 100us",
            classes: vec![Class {
                name: "all",
                share: 1.0,
                service_us: 100.0,
            }],
            short_p99_target_us: 2_000.0,
            exponential: true,
        }
    }

    /// Mean service time, µs.
    pub fn mean_service_us(&self) -> f64 {
        self.classes.iter().map(|c| c.share * c.service_us).sum()
    }
}

/// A request: when it is due (ns after the start), its class, and its work (iterations).
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub due_ns: u64,
    pub class: usize,
    pub iters: u64,
}

/// xorshift64*: a fixed-seed generator, so every scheduler sees the same arrivals.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * self.unit().ln()
    }
}

/// Poisson arrivals at `rate_per_s` for `seconds`, classes drawn by share, work from
/// `per_us` iterations per µs (calibrated in the same run). With the same seed, every rate
/// gets the same sequence of requests (classes, work, and gaps up to the scale `1/rate`),
/// so points at different loads differ only in load.
pub fn arrivals(
    workload: &Workload,
    rate_per_s: f64,
    seconds: f64,
    per_us: f64,
    seed: u64,
) -> Vec<Request> {
    let mut rng = Rng::new(seed);
    let mut t_ns = 0.0;
    let mut out = Vec::new();
    let end_ns = seconds * 1e9;
    loop {
        t_ns += rng.exp(1e9 / rate_per_s);
        if t_ns >= end_ns {
            return out;
        }
        let pick = rng.unit();
        let mut acc = 0.0;
        let mut class = workload.classes.len() - 1;
        for (i, c) in workload.classes.iter().enumerate() {
            acc += c.share;
            if pick <= acc {
                class = i;
                break;
            }
        }
        let mean = workload.classes[class].service_us;
        let us = if workload.exponential {
            rng.exp(mean)
        } else {
            mean
        };
        out.push(Request {
            due_ns: t_ns as u64,
            class,
            iters: (us * per_us).max(1.0) as u64,
        });
    }
}

/// Fixed CPU work: `iters` rounds of a dependent integer chain (an LCG and a rotate).
pub fn burn(iters: u64) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..iters {
        x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i)).rotate_left(7);
    }
    x
}

/// The load a trace actually offers: its total work over `workers` × its span (the
/// Poisson draw makes it differ from the nominal load, most when few long requests carry
/// most of the work).
pub fn offered_load(requests: &[Request], per_us: f64, workers: usize, seconds: f64) -> f64 {
    let work_us: f64 = requests.iter().map(|r| r.iters as f64 / per_us).sum();
    work_us / (workers as f64 * seconds * 1e6)
}

/// Iterations of [`burn`] per µs on this machine: the fastest of several timed runs.
pub fn calibrate(now_ns: impl Fn() -> u64) -> f64 {
    let iters = 4_000_000;
    let best = (0..7)
        .map(|_| {
            let t = now_ns();
            black_box(burn(iters));
            now_ns() - t
        })
        .min()
        .unwrap_or(1)
        .max(1);
    iters as f64 / (best as f64 / 1e3)
}

/// The `p`-quantile (0..=1) of `v`, which it sorts; NaN if empty.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}
