//! The FaaS example driven over loopback by a real HTTP client (curl):
//!
//! 1. With a runaway request among good ones: good requests still succeed, the runaway
//!    answers 503, and the server (a supervisor and its workers) shuts down cleanly on
//!    SIGTERM.
//! 2. Under a low file-descriptor limit (`ulimit -n 256`), with more idle clients than it
//!    has descriptors and clients trickling their headers a byte a second: the idle and
//!    trickling connections are closed at the header timeout, good requests still succeed
//!    within their own timeout, the server stays near idle (no accept loop spinning on
//!    `EMFILE`) and says so at most about once a second.
//!
//! It runs `examples/faas.rs` (built by `cargo test`) as a child process, so the signals
//! and freezes stay in there.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
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
    // The supervisor and its workers; no file-descriptor limit of note.
    let (server, base, _stderr) = start_limited(None, &["--port", "0"]);

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
    assert!(body.starts_with("{\"pid\":"), "{body}");
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

/// Starts the example under `sh -c 'ulimit -n <fds>; exec ...'` (no limit with `None`)
/// with `args`; returns the
/// server, its base URL, and its stderr lines as they come. Its output is read on
/// threads (and kept draining, so it never blocks on a full pipe); a silent server fails
/// the test at the deadline instead of hanging it. The first line says where it listens,
/// after building the services, which can take a while the first time.
fn start_limited(fds: Option<u32>, args: &[&str]) -> (Server, String, mpsc::Receiver<String>) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(match fds {
            Some(fds) => format!("ulimit -n {fds} && exec \"$0\" \"$@\""),
            None => "exec \"$0\" \"$@\"".to_string(),
        })
        .arg(example())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the faas example under sh");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let server = Server(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = etx.send(line);
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
    // Keep draining its stdout.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    (server, base, erx)
}

/// CPU time (user + system) of process `pid` so far.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the server's stat");
    // The fields after the command's closing parenthesis: state is the 3rd field, utime
    // the 14th and stime the 15th.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis((fields[11] + fields[12]) * 1000 / hz)
}

#[test]
fn idle_and_trickling_clients_under_a_low_fd_limit_do_not_starve_or_spin_the_server() {
    if Command::new("curl").arg("--version").output().is_err() {
        panic!("this test needs curl (apt-get install curl)");
    }
    // One process (no supervisor), so its CPU time is the server's.
    let (server, base, stderr) = start_limited(Some(256), &["--port", "0", "--workers", "0"]);
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    let (status, body) = curl(
        &["-X", "POST", "--data-binary", "warm"],
        &format!("{base}/hash"),
    );
    assert_eq!((status, body.len()), (200, 16), "{body}");

    // More idle clients than the server has descriptors: it runs out (EMFILE).
    let started = Instant::now();
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| {
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()
        })
        .collect();
    assert!(
        idle.len() >= 250,
        "only {} idle clients connected",
        idle.len()
    );
    // Clients trickling their headers, a byte a second: closed at the header timeout.
    let tricklers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || -> Option<Duration> {
                let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
                let t0 = Instant::now();
                s.write_all(b"POST /hash HTTP/1.1\r\n").ok()?;
                s.set_read_timeout(Some(Duration::from_millis(1000))).ok()?;
                let mut buf = [0u8; 256];
                while t0.elapsed() < Duration::from_secs(40) {
                    if s.write_all(b"X").is_err() {
                        return Some(t0.elapsed());
                    }
                    match s.read(&mut buf) {
                        Ok(0) => return Some(t0.elapsed()),
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => return Some(t0.elapsed()),
                    }
                }
                None
            })
        })
        .collect();

    // While they idle, the server idles too: no accept loop spinning on EMFILE.
    std::thread::sleep(Duration::from_millis(500));
    let pid = server.0.id();
    let (cpu0, t0) = (cpu_of(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_of(pid).saturating_sub(cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
    assert!(
        used < 0.10,
        "the server used {:.1} % of a core while its clients idled",
        used * 100.0
    );

    // Good requests still succeed, within their own timeout (curl's --max-time 60): the
    // idle connections are closed at the header timeout, and the queued ones get their
    // turn.
    for i in 0..5 {
        let (status, body) = curl(
            &["-X", "POST", "--data-binary", &format!("good {i}")],
            &format!("{base}/hash"),
        );
        assert_eq!((status, body.len()), (200, 16), "good request {i}: {body}");
    }
    for (i, t) in tricklers.into_iter().enumerate() {
        let closed = t.join().unwrap();
        assert!(
            closed.is_some(),
            "trickling client {i} was never disconnected"
        );
    }
    drop(idle);
    // The out-of-descriptors errors are reported, but at most about once a second.
    let elapsed = started.elapsed().as_secs();
    std::thread::sleep(Duration::from_millis(200));
    let lines: Vec<String> = stderr.try_iter().collect();
    let accept_errors = lines.iter().filter(|l| l.starts_with("accept:")).count();
    assert!(
        accept_errors as u64 <= elapsed + 2,
        "{accept_errors} accept error lines in {elapsed} s:\n{}",
        lines.join("\n")
    );
    drop(server);
}
