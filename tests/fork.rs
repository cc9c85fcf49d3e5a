//! A pool inherited by a forked child: its threads stayed in the parent, so spawns there
//! resolve at once with `JoinError::Forked`, so do handles of tasks unfinished at the
//! fork (joined, timed or awaited), and `shutdown()` returns. The parent's pool is
//! unaffected.
//!
//! Runs in a child process (`common::in_child`), which forks again; the forked child
//! reports through its exit status and writes with `write(2)` only (another thread may
//! have held std's stdout lock at the fork).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{builder, in_child, join};
use microsched::JoinError;

fn say(text: &str) {
    // SAFETY: writes a live buffer of `text.len()` bytes to fd 2.
    unsafe { libc::write(2, text.as_ptr().cast(), text.len()) };
}

/// Waits for `pid` with a deadline; kills it if it is late.
fn wait_child(pid: libc::pid_t, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        }
        if Instant::now() > deadline {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_forked_child_gets_clear_errors_and_shutdown_returns() {
    in_child(
        "a_forked_child_gets_clear_errors_and_shutdown_returns",
        || {
            let pool = builder(1).build().unwrap();
            assert_eq!(join(pool.spawn(|| 1u8)).unwrap(), 1);
            // The one runner is busy until `go`; a second task waits in the queue.
            let go = Arc::new(AtomicBool::new(false));
            let g = go.clone();
            let busy = pool.spawn(move || {
                while !g.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                2u8
            });
            let queued = pool.spawn(|| 3u8);
            // SAFETY: the child only spawns, joins, shuts the pool down, writes with write(2)
            // and leaves with _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                let spawned = pool.spawn(|| 4u8).join_timeout(Duration::from_secs(10));
                let ok_spawn = matches!(spawned, Ok(Err(JoinError::Forked)));
                let handle = pool.handle();
                let ok_handle = matches!(
                    handle.spawn(|| 5u8).join_timeout(Duration::from_secs(10)),
                    Ok(Err(JoinError::Forked))
                );
                pool.shutdown();
                let ok_queued = matches!(
                    queued.join_timeout(Duration::from_secs(10)),
                    Ok(Err(JoinError::Forked))
                );
                let ok_busy = matches!(busy.join(), Err(JoinError::Forked));
                let ok = ok_spawn && ok_handle && ok_queued && ok_busy;
                say(if ok {
                    "fork child: all as expected\n"
                } else {
                    "fork child: FAILED\n"
                });
                if !ok_spawn {
                    say("  spawn in the child did not resolve with Forked\n");
                }
                if !ok_handle {
                    say("  a Handle's spawn in the child did not resolve with Forked\n");
                }
                if !ok_queued {
                    say("  the task queued at the fork did not resolve with Forked\n");
                }
                if !ok_busy {
                    say("  the task running at the fork did not resolve with Forked\n");
                }
                std::mem::forget(pool);
                // SAFETY: leaves the child at once (no atexit handlers, no harness).
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            let status = wait_child(pid, Duration::from_secs(30));
            assert_eq!(status, Some(0), "the forked child failed or hung (None)");
            // The parent's pool is untouched.
            go.store(true, Ordering::SeqCst);
            assert_eq!(join(busy).unwrap(), 2);
            assert_eq!(join(queued).unwrap(), 3);
            assert_eq!(join(pool.spawn(|| 6u8)).unwrap(), 6);
            pool.shutdown();
        },
    );
}
