//! The hash service's logic: the FNV-1a 64-bit hash of the input, in hex, repeated over the
//! payload `rounds` times (the first byte of the input, at least 1) so callers can ask for
//! work.

#![forbid(unsafe_code)]

/// The service's entry point.
pub fn handle(input: &[u8]) -> Result<Vec<u8>, String> {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for _ in 0..input.first().map_or(1, |&r| u32::from(r).max(1)) {
        for &b in input {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("{hash:016x}").into_bytes())
}
