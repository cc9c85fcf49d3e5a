//! The FaaS example driven over loopback by a real HTTP client (curl), with a runaway
//! request among good ones: good requests still succeed, the runaway answers 503, and the
//! server shuts down cleanly on SIGTERM.
//!
//! It runs `examples/faas.rs` (built by `cargo test`) as a child process, so the signals
//! and freezes stay in there.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The example binary: next to this test's in the target directory when `cargo test`
/// built it with the other targets, else built now (`cargo test --test faas` builds only
/// this test) into a target directory of its own.
fn example() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let next_to_us = dir.join("examples").join("faas");
    if next_to_us.exists() {
        return next_to_us;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target").join("faas-test");
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["build", "--quiet", "--example", "faas", "--target-dir"])
        .arg(&target)
        .status()
        .expect("run cargo to build the faas example");
    assert!(status.success(), "building the faas example failed");
    target.join("debug").join("examples").join("faas")
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs curl; returns (status, body).
fn curl(args: &[&str], url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn good_requests_succeed_around_a_runaway_and_sigterm_shuts_down() {
    if Command::new("curl").arg("--version").output().is_err() {
        panic!("this test needs curl (apt-get install curl)");
    }
    let mut child = Command::new(example())
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the faas example (built by cargo test)");
    let stdout = child.stdout.take().expect("piped stdout");
    let server = Server(child);
    // The first line says where it listens (after building the services, which can take
    // a while the first time).
    // Read its output on a thread (and keep draining it, so it never blocks on a full
    // pipe); a silent server fails the test at the deadline instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    let base = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the server did not start in time");
        if let Some(url) = line.strip_prefix("listening on ") {
            break url.to_string();
        }
    };

    let (status, body) = curl(
        &["-X", "POST", "--data-binary", "hello"],
        &format!("{base}/hash"),
    );
    assert_eq!((status, body.len()), (200, 16), "{body}");
    // A runaway and good requests at the same time.
    let runaway = {
        let url = format!("{base}/runaway");
        std::thread::spawn(move || curl(&["-X", "POST", "-d", "x"], &url))
    };
    for i in 0..20 {
        let (status, body) = curl(
            &["-X", "POST", "-d", &format!("{{\"name\":\"n{i}\"}}")],
            &format!("{base}/json"),
        );
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains(&format!("\"N{i}\"")) && body.contains("\"keys\":1"),
            "{body}"
        );
    }
    let (status, body) = runaway.join().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("killed"), "{body}");
    let (status, body) = curl(&["-X", "POST", "-d", "x"], &format!("{base}/panic"));
    assert_eq!(status, 500, "{body}");
    let (status, _) = curl(&["-X", "POST"], &format!("{base}/no-such-service"));
    assert_eq!(status, 404);
    let (status, body) = curl(&[], &format!("{base}/stats"));
    assert_eq!(status, 200);
    assert!(body.contains("\"frozen\":1"), "{body}");
    // Graceful shutdown on SIGTERM: exits with success.
    let mut server = server;
    // SAFETY: kill(2) on our own child's pid.
    let sent = unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    assert_eq!(sent, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = server.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}
