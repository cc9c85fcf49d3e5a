//! The monitor: one small thread per preemptible pool, like Go's sysmon. It keeps every
//! slot's reserve stocked with parked standbys, so a handoff never waits for
//! `pthread_create`, and joins pool threads that have exited.
//!
//! 1. Read the bell (a handoff, a closing slot, or a failed start rings it).
//! 2. For each open slot, start standbys until parked plus starting reaches the target.
//!    Standbys are created here, by a thread at normal priority: threads inherit their
//!    creator's scheduling policy, and a demoted carrier must never create one.
//! 3. Join pool threads that have exited (carriers that retired).
//! 4. Every slot closed (shutdown has ended all runners): exit. Otherwise sleep on the bell
//!    while it still reads what step 1 read, or until a timeout (short after a failed
//!    start, so it retries).

use std::sync::Arc;
use std::time::Duration;

use crate::carrier::{self, Role};
use crate::loom::Ordering;
use crate::pool::Shared;

/// How long to wait before retrying after the OS refused a thread.
const RETRY: Duration = Duration::from_millis(10);
/// How long to sleep with nothing to do (only to join exited threads now and then).
const IDLE: Duration = Duration::from_secs(1);

pub(crate) fn run(shared: Arc<Shared>) {
    let Some(preempt) = &shared.preempt else {
        return;
    };
    loop {
        let bell = preempt.bell.load(Ordering::Acquire);
        let mut open = false;
        let mut failed = false;
        for (index, reserve) in preempt.reserves.iter().enumerate() {
            if reserve.is_closed() {
                continue;
            }
            open = true;
            while reserve.ready() + reserve.starting() < preempt.standbys {
                reserve.start_one();
                if carrier::spawn(&shared, index, Role::Standby, None).is_err() {
                    reserve.start_failed();
                    failed = true;
                    break;
                }
            }
        }
        shared.join_exited();
        if !open {
            return;
        }
        preempt
            .bell
            .wait(bell, Some(if failed { RETRY } else { IDLE }));
    }
}
