//! Lock-free protocols between ordinary threads (and, for [`reserve`], the signal
//! handler), each checked with loom through its facade.

pub(crate) mod loom;
pub(crate) mod reserve;
pub(crate) mod sleep;
pub(crate) mod spawn_gate;
