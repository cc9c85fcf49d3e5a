//! A service that panics on every request (caught on its own side of the boundary).

microsched_service::export_service!(logic::handle);

mod logic {
    #![forbid(unsafe_code)]

    pub fn handle(input: &[u8]) -> Result<Vec<u8>, String> {
        panic!(
            "the panic service panics on every request ({} bytes in)",
            input.len()
        );
    }
}
