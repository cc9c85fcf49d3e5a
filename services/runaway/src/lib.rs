//! A deliberately runaway service: it never returns. The host's budget has to stop it.

microsched_service::export_service!(logic::handle);

mod logic {
    #![forbid(unsafe_code)]

    pub fn handle(input: &[u8]) -> Result<Vec<u8>, String> {
        let mut x = input.len() as u64;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}
