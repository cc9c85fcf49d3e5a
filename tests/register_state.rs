//! Floating-point and SIMD register state survives preemption: tasks computing checksums
//! while ticks and handoffs land mid-computation give exactly the sequential results.

mod common;

use common::{constantly_preempted, in_child, join};

/// Scalar f64 work whose accumulators live in SSE registers across the loop.
fn float_checksum(seed: u64, rounds: u32) -> u64 {
    let mut a = seed as f64 * 1e-3 + 0.5;
    let mut b = 1.0f64 / (seed as f64 + 3.0);
    let mut c = 0.0f64;
    for i in 0..rounds {
        a = a * 1.000_000_1 + b;
        b = (b * 0.999_999_7) - a * 1e-9 + f64::from(i % 7) * 1e-12;
        c += a.sqrt() * b;
        if a > 1e6 {
            a *= 1e-6;
        }
    }
    a.to_bits() ^ b.to_bits().rotate_left(21) ^ c.to_bits().rotate_left(42)
}

/// Vector work: 128-bit SSE2 (always there on x86_64), and 256-bit AVX when the CPU has it.
#[cfg(target_arch = "x86_64")]
fn simd_checksum(seed: u64, rounds: u32) -> u64 {
    use std::arch::x86_64::*;

    /// # Safety
    ///
    /// The CPU supports AVX.
    #[target_feature(enable = "avx")]
    unsafe fn avx(seed: u64, rounds: u32) -> [f64; 4] {
        let s = seed as f64;
        let mut out = [0.0; 4];
        // SAFETY: the caller checked AVX; the store writes four f64 into `out`.
        unsafe {
            let mut acc = _mm256_set_pd(s, s + 1.0, s + 2.0, s + 3.0);
            let mul = _mm256_set1_pd(1.000_000_3);
            let add = _mm256_set_pd(1e-3, 2e-3, 3e-3, 4e-3);
            for _ in 0..rounds {
                acc = _mm256_add_pd(_mm256_mul_pd(acc, mul), add);
            }
            _mm256_storeu_pd(out.as_mut_ptr(), acc);
        }
        out
    }

    // SAFETY: SSE2 is part of the x86_64 baseline; `out` has room for two f64.
    let sse = unsafe {
        let s = seed as f64;
        let mut acc = _mm_set_pd(s, s * 0.5);
        let mul = _mm_set1_pd(0.999_999_9);
        let add = _mm_set_pd(1e-4, 3e-4);
        for _ in 0..rounds {
            acc = _mm_add_pd(_mm_mul_pd(acc, mul), add);
        }
        let mut out = [0.0; 2];
        _mm_storeu_pd(out.as_mut_ptr(), acc);
        out
    };
    let mut sum = sse[0].to_bits() ^ sse[1].to_bits().rotate_left(9);
    if is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX, checked just above.
        for (i, v) in unsafe { avx(seed, rounds) }.iter().enumerate() {
            sum ^= v.to_bits().rotate_left(13 * i as u32 + 1);
        }
    }
    sum
}

#[cfg(not(target_arch = "x86_64"))]
fn simd_checksum(seed: u64, rounds: u32) -> u64 {
    float_checksum(seed ^ 0xABCD, rounds)
}

fn checksum(seed: u64, rounds: u32) -> u64 {
    float_checksum(seed, rounds) ^ simd_checksum(seed, rounds).rotate_left(1)
}

#[test]
fn float_and_simd_results_match_the_sequential_ones() {
    in_child("float_and_simd_results_match_the_sequential_ones", || {
        // Enough rounds that each task spans many 100 µs quanta even in release builds.
        let rounds = if cfg!(debug_assertions) {
            200_000
        } else {
            2_000_000
        };
        let seeds: Vec<u64> = (1..=64).collect();
        let expected: Vec<u64> = seeds.iter().map(|&s| checksum(s, rounds)).collect();
        let pool = constantly_preempted(2);
        let tasks: Vec<_> = seeds
            .iter()
            .map(|&s| pool.spawn(move || checksum(s, rounds)))
            .collect();
        let got: Vec<u64> = tasks.into_iter().map(|t| join(t).unwrap()).collect();
        let stats = pool.stats();
        assert_eq!(got, expected);
        assert!(
            stats.ticks >= 64 && stats.handoffs >= 8,
            "too little preemption: {stats:?}"
        );
    });
}
