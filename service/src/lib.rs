//! The C ABI between a microsched host and a service in a shared object.
//!
//! A service is a `cdylib` crate whose logic is safe Rust (`#![forbid(unsafe_code)]` in
//! the module that holds it) with one entry point, `fn(&[u8]) -> Result<Vec<u8>, String>`:
//! bytes in, bytes out. [`export_service!`] wraps it in the C ABI the host calls:
//!
//! - `MICROSCHED_SERVICE_ABI: u32`, which the host checks against [`ABI_VERSION`];
//! - `microsched_service_call(input, input_len, output, output_cap, output_len) -> i32`:
//!   the host provides both buffers; the service writes at most `output_cap` bytes, sets
//!   `*output_len` to the length of its whole answer, and returns a status ([`OK`],
//!   [`TOO_SMALL`], [`FAILED`], [`PANICKED`]).
//!
//! The service has its own copy of std, so a panic must never cross the boundary: it is
//! caught on the service's side and comes back as [`PANICKED`] with its message.
//!
//! ```ignore
//! microsched_service::export_service!(logic::handle);
//!
//! mod logic {
//!     #![forbid(unsafe_code)]
//!     pub fn handle(input: &[u8]) -> Result<Vec<u8>, String> {
//!         Ok(input.to_ascii_uppercase())
//!     }
//! }
//! ```

use std::panic::{self, AssertUnwindSafe};

/// The version of this ABI; the host refuses a service that exports another.
pub const ABI_VERSION: u32 = 1;
/// The name of the ABI version symbol.
pub const ABI_SYMBOL: &str = "MICROSCHED_SERVICE_ABI";
/// The name of the entry point.
pub const CALL_SYMBOL: &str = "microsched_service_call";

/// The answer is in the output buffer.
pub const OK: i32 = 0;
/// The answer did not fit: `*output_len` says how long it is; nothing was written.
pub const TOO_SMALL: i32 = 1;
/// The service returned an error; its message is in the output buffer (truncated).
pub const FAILED: i32 = 2;
/// The service panicked; the panic message is in the output buffer (truncated).
pub const PANICKED: i32 = 3;

/// The type of the entry point, as the host calls it.
pub type CallFn = unsafe extern "C" fn(*const u8, usize, *mut u8, usize, *mut usize) -> i32;

/// A service's logic.
pub type Handler = fn(&[u8]) -> Result<Vec<u8>, String>;

/// Runs `handler` on the input and writes its answer, as the ABI says. Used by
/// [`export_service!`]; panics are caught here, on the service's side.
///
/// # Safety
///
/// `input` points at `input_len` readable bytes (or `input_len` is 0), `output` at
/// `output_cap` writable bytes (or `output_cap` is 0), and `output_len` at a writable
/// `usize`; none of them overlap.
pub unsafe fn call(
    handler: Handler,
    input: *const u8,
    input_len: usize,
    output: *mut u8,
    output_cap: usize,
    output_len: *mut usize,
) -> i32 {
    let input: &[u8] = if input_len == 0 {
        &[]
    } else {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts(input, input_len) }
    };
    let (status, answer) = match panic::catch_unwind(AssertUnwindSafe(|| handler(input))) {
        Ok(Ok(bytes)) => (OK, bytes),
        Ok(Err(message)) => (FAILED, message.into_bytes()),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with a non-string payload".into());
            // Dropping the payload could panic again: leak it instead.
            std::mem::forget(payload);
            (PANICKED, message.into_bytes())
        }
    };
    // SAFETY: the caller's contract.
    unsafe { *output_len = answer.len() };
    if status == OK && answer.len() > output_cap {
        return TOO_SMALL;
    }
    let n = answer.len().min(output_cap);
    if n > 0 {
        // SAFETY: `n <= output_cap` bytes into the caller's buffer, which does not overlap
        // `answer`.
        unsafe { std::ptr::copy_nonoverlapping(answer.as_ptr(), output, n) };
    }
    status
}

/// Exports `handler` (a path to a `fn(&[u8]) -> Result<Vec<u8>, String>`) as the
/// service's entry point, with the ABI version symbol. Use it once, at the crate root.
#[macro_export]
macro_rules! export_service {
    ($handler:path) => {
        /// The ABI version this service speaks.
        #[no_mangle]
        pub static MICROSCHED_SERVICE_ABI: u32 = $crate::ABI_VERSION;

        /// The entry point (see `microsched_service`).
        ///
        /// # Safety
        ///
        /// As `microsched_service::call`.
        #[no_mangle]
        pub unsafe extern "C" fn microsched_service_call(
            input: *const u8,
            input_len: usize,
            output: *mut u8,
            output_cap: usize,
            output_len: *mut usize,
        ) -> i32 {
            // SAFETY: the host passes the buffers the ABI describes.
            unsafe { $crate::call($handler, input, input_len, output, output_cap, output_len) }
        }
    };
}
