//! A service built against another version of the ABI: the host must refuse to load it.

/// An ABI version no host speaks.
#[no_mangle]
pub static MICROSCHED_SERVICE_ABI: u32 = 999;
