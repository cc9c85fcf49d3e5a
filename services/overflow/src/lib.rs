//! A service that overflows its stack (unbounded recursion).

microsched_service::export_service!(logic::handle);

mod logic {
    #![forbid(unsafe_code)]

    #[inline(never)]
    #[allow(unconditional_recursion)]
    fn deeper(depth: u64) -> u64 {
        let frame = std::hint::black_box([depth; 32]);
        deeper(depth + 1).wrapping_add(frame[5])
    }

    pub fn handle(input: &[u8]) -> Result<Vec<u8>, String> {
        Ok(deeper(input.len() as u64).to_le_bytes().to_vec())
    }
}
