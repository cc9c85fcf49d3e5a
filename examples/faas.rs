//! A FaaS server: functions are Rust shared objects loaded into this process, and each
//! request runs one on the pool, under its service's budget.
//!
//! ```text
//! cargo run --release --example faas -- --self-test   # start, drive itself, report, exit 0
//! cargo run --release --example faas                   # serve on 127.0.0.1:8080 until Ctrl-C
//! ```
//!
//! Routes: `POST /<service>` runs service `<service>` (the file `libsvc_<service>.so`) on
//! the request body and answers with its output (200). A request killed for its budget
//! answers 503 with the reason, a service panic 500, a service error 422, an unknown
//! service 404. `GET /stats` answers the pool's stats as JSON. SIGINT and SIGTERM shut the
//! server down gracefully: no new connections, the requests in flight finish (or are
//! killed by their budgets), then the pool shuts down.
//!
//! The example services (in `services/`) are built first if needed: `hash`, `json`,
//! `runaway` (never returns), `panic` (panics), `overflow` (overflows its stack).

#[path = "support/services.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use microsched::{Budget, CallError, JoinError, LoadError, Pool, ServiceCache};

/// The budget each service gets: small for the ones meant to misbehave.
fn budget_for(service: &str) -> Budget {
    match service {
        "runaway" => Budget::cpu(Duration::from_millis(20)).grace(Duration::from_millis(5)),
        _ => Budget::cpu(Duration::from_millis(200))
            .and_wall(Duration::from_secs(2))
            .grace(Duration::from_millis(10)),
    }
}

struct Server {
    pool: Pool,
    services: ServiceCache,
    stop: Arc<AtomicBool>,
    requests: AtomicU64,
}

/// One parsed request.
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// The largest request body accepted, and the most header bytes.
const MAX_BODY: usize = 1 << 20;
const MAX_HEAD: u64 = 16 * 1024;

/// Why a request could not be read: the status to answer with.
type Refusal = (u16, &'static str);

fn read_request(stream: &mut TcpStream) -> std::io::Result<Result<Request, Refusal>> {
    let mut reader = BufReader::new(stream.try_clone()?);
    // The request line and headers, at most MAX_HEAD bytes in all.
    let mut head = (&mut reader).take(MAX_HEAD);
    let mut line = String::new();
    head.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let (mut length, mut chunked, mut expect_continue, mut bad_length) = (0, false, false, false);
    loop {
        let mut header = String::new();
        if head.read_line(&mut header)? == 0 {
            return Ok(Err((400, "the headers are too long or cut short")));
        }
        if header == "\r\n" || header == "\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("content-length") {
                match value.parse::<usize>() {
                    Ok(n) => length = n,
                    Err(_) => bad_length = true,
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = true;
            } else if name.eq_ignore_ascii_case("expect") {
                expect_continue = value.eq_ignore_ascii_case("100-continue");
            }
        }
    }
    if bad_length || chunked {
        return Ok(Err((
            400,
            "send the body with a Content-Length (no chunked encoding)",
        )));
    }
    if length > MAX_BODY {
        return Ok(Err((413, "the body is larger than 1 MiB")));
    }
    if expect_continue {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Ok(Request { method, path, body }))
}

fn respond(stream: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Content Too Large",
        405 => "Method Not Allowed",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

impl Server {
    fn handle(&self, mut stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request = match read_request(&mut stream) {
            Ok(Ok(request)) => request,
            Ok(Err((status, why))) => {
                respond(
                    &mut stream,
                    status,
                    "text/plain; charset=utf-8",
                    format!("{why}\n").as_bytes(),
                );
                return;
            }
            Err(_) => return,
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        let (status, kind, body) = self.route(&request);
        respond(&mut stream, status, kind, body.bytes());
    }

    fn route(&self, request: &Request) -> (u16, &'static str, Body) {
        let text = "text/plain; charset=utf-8";
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/stats") => (200, "application/json", Body::Text(self.stats_json())),
            ("POST", path) => {
                let name = path.trim_start_matches('/');
                let service = match self.services.get(&format!("svc_{name}")) {
                    Ok(service) => service,
                    Err(e @ (LoadError::BadName(_) | LoadError::Open { .. })) => {
                        return (404, text, Body::Text(format!("no such service: {e}\n")))
                    }
                    Err(e) => return (500, text, Body::Text(format!("{e}\n"))),
                };
                let input = request.body.clone();
                let handle = self
                    .pool
                    .spawn_with(budget_for(name), move || service.call(&input));
                // Bounded even if the kill is refused (past the pool's frozen-thread cap):
                // the connection and shutdown never wait on a runaway for good.
                let Ok(result) = handle.join_timeout(Duration::from_secs(30)) else {
                    return (
                        503,
                        text,
                        Body::Text("the request did not finish in 30 s\n".into()),
                    );
                };
                match result {
                    Ok(Ok(output)) => (200, "application/octet-stream", Body::Bytes(output)),
                    Ok(Err(CallError::Panicked(m))) => (
                        500,
                        text,
                        Body::Text(format!("the service panicked: {m}\n")),
                    ),
                    Ok(Err(e)) => (422, text, Body::Text(format!("{e}\n"))),
                    Err(JoinError::Killed(k)) => (503, text, Body::Text(format!("killed: {k}\n"))),
                    Err(e) => (500, text, Body::Text(format!("{e}\n"))),
                }
            }
            _ => (
                405,
                text,
                Body::Text("use POST /<service> or GET /stats\n".into()),
            ),
        }
    }

    fn stats_json(&self) -> String {
        let s = self.pool.stats();
        format!(
            "{{\"requests\":{},\"spawned\":{},\"completed\":{},\"panicked\":{},\"cancelled\":{},\
             \"frozen\":{},\"frozen_threads\":{},\"kills_cpu_budget\":{},\"kills_wall_deadline\":{},\
             \"kills_stack_overflow\":{},\"handoffs\":{},\"service_loads\":{}}}\n",
            self.requests.load(Ordering::Relaxed),
            s.spawned,
            s.completed,
            s.panicked,
            s.cancelled,
            s.frozen,
            s.frozen_threads,
            s.kills_cpu_budget,
            s.kills_wall_deadline,
            s.kills_stack_overflow,
            s.handoffs,
            self.services.loads()
        )
    }
}

enum Body {
    Text(String),
    Bytes(Vec<u8>),
}

impl Body {
    fn bytes(&self) -> &[u8] {
        match self {
            Body::Text(t) => t.as_bytes(),
            Body::Bytes(b) => b,
        }
    }
}

/// Accepts connections until `stop` is set; one thread per connection (it waits for its
/// request's task; the work itself runs on the pool).
fn serve(listener: TcpListener, server: Arc<Server>) {
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let mut connections = Vec::new();
    while !server.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let server = server.clone();
                connections.push(std::thread::spawn(move || server.handle(stream)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => eprintln!("accept: {e}"),
        }
        connections.retain(|c: &std::thread::JoinHandle<()>| !c.is_finished());
    }
    // Requests in flight finish (each is bounded: budgets, a 30 s join, a 10 s read
    // timeout per read); a client that keeps a connection open without sending is not
    // waited for past a deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    while connections.iter().any(|c| !c.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A minimal HTTP/1.1 client for the self-test: status and body.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |i| i + 4);
    let status = std::str::from_utf8(&response[..split.min(response.len())])
        .ok()
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, response[split..].to_vec()))
}

fn fnv(input: &[u8]) -> String {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for _ in 0..input.first().map_or(1, |&r| u32::from(r).max(1)) {
        for &b in input {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// Drives the server with a mix of good, runaway and panicking requests from a few client
/// threads; returns whether everything came back as expected, and the SUMMARY line.
fn self_test(port: u16) -> (bool, String) {
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Expect {
        Ok,
        Killed,
        Panicked,
    }
    let mut plan: Vec<(&str, Vec<u8>, Expect)> = Vec::new();
    for i in 0..60 {
        plan.push(("/hash", format!("payload {i}").into_bytes(), Expect::Ok));
        if i % 4 == 0 {
            plan.push((
                "/json",
                format!("{{\"name\":\"ada\",\"n\":{i}}}").into_bytes(),
                Expect::Ok,
            ));
        }
        if i % 15 == 7 {
            plan.push(("/runaway", b"spin".to_vec(), Expect::Killed));
            plan.push(("/panic", b"boom".to_vec(), Expect::Panicked));
        }
        if i % 30 == 11 {
            plan.push(("/overflow", b"deep".to_vec(), Expect::Killed));
        }
    }
    let total = plan.len();
    let started = Instant::now();
    let results: Vec<(Expect, u16, bool)> = std::thread::scope(|scope| {
        let chunks: Vec<_> = plan.chunks(total.div_ceil(4)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|(path, body, expect)| {
                            let (status, answer) =
                                http(port, "POST", path, body).unwrap_or((0, vec![]));
                            let right = match (*path, status) {
                                ("/hash", 200) => answer == fnv(body).into_bytes(),
                                ("/json", 200) => {
                                    let text = String::from_utf8_lossy(&answer);
                                    text.contains("\"ADA\"") && text.contains("\"keys\":2")
                                }
                                _ => true,
                            };
                            (*expect, status, right)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let count = |e: Expect, status: u16| {
        results
            .iter()
            .filter(|(x, s, right)| *x == e && *s == status && *right)
            .count()
    };
    let (ok, killed, panicked) = (
        count(Expect::Ok, 200),
        count(Expect::Killed, 503),
        count(Expect::Panicked, 500),
    );
    let expected = |e: Expect| results.iter().filter(|(x, _, _)| *x == e).count();
    let (missing_status, _) = http(port, "POST", "/no-such-service", b"").unwrap_or((0, vec![]));
    let (stats_status, stats) = http(port, "GET", "/stats", b"").unwrap_or((0, vec![]));
    let alive = stats_status == 200 && stats.starts_with(b"{");
    println!(
        "self-test: {total} requests in {:.2?}: {ok}/{} good answered right (hash, json), \
         {killed}/{} runaway and overflowing killed (503), {panicked}/{} panicking answered 500; \
         an unknown service answered {missing_status}",
        started.elapsed(),
        expected(Expect::Ok),
        expected(Expect::Killed),
        expected(Expect::Panicked),
    );
    println!("GET /stats: {}", String::from_utf8_lossy(&stats).trim());
    let passed = alive
        && missing_status == 404
        && ok == expected(Expect::Ok)
        && killed == expected(Expect::Killed)
        && panicked == expected(Expect::Panicked);
    (
        passed,
        format!(
            "SUMMARY faas requests={total} ok={ok} killed={killed} panicked={panicked} server_alive={alive}"
        ),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let test = args.iter().any(|a| a == "--self-test");
    let port: u16 = match args.iter().position(|a| a == "--port") {
        Some(i) => args.get(i + 1).ok_or("--port needs a number")?.parse()?,
        None if test => 0,
        None => 8080,
    };
    let dir = support::build(false)?;
    let server = Arc::new(Server {
        pool: Pool::new()?,
        // SAFETY: the directory holds the example services, built just above with
        // `export_service!`.
        services: unsafe { ServiceCache::new(dir, 16) },
        stop: Arc::new(AtomicBool::new(false)),
        requests: AtomicU64::new(0),
    });
    signal_hook::flag::register(signal_hook::consts::SIGINT, server.stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, server.stop.clone())?;
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let port = listener.local_addr()?.port();
    println!("listening on http://127.0.0.1:{port}");
    if !test {
        println!("try:");
        println!("  curl -s -X POST --data-binary 'hello' http://127.0.0.1:{port}/hash");
        println!("  curl -s -X POST -d '{{\"name\":\"ada\"}}' http://127.0.0.1:{port}/json");
        println!("  curl -s -i -X POST http://127.0.0.1:{port}/runaway     # 503 after its budget");
        println!("  curl -s -i -X POST http://127.0.0.1:{port}/panic       # 500");
        println!("  curl -s http://127.0.0.1:{port}/stats");
        println!("Ctrl-C to stop.");
    }
    // Flush so a parent reading our output sees the port before we block.
    std::io::stdout().flush()?;
    let serving = {
        let server = server.clone();
        std::thread::spawn(move || serve(listener, server))
    };
    let (passed, summary) = if test {
        let (passed, summary) = self_test(port);
        server.stop.store(true, Ordering::SeqCst);
        (passed, Some(summary))
    } else {
        (true, None)
    };
    serving.join().map_err(|_| "the accept loop panicked")?;
    let stats = server.pool.stats();
    server.pool.shutdown();
    println!(
        "shut down: {} requests, {} tasks completed, {} killed ({} frozen threads left behind)",
        server.requests.load(Ordering::Relaxed),
        stats.completed,
        stats.cancelled + stats.frozen,
        stats.frozen_threads
    );
    if let Some(summary) = summary {
        println!("{summary}");
    }
    if !passed {
        return Err("the self-test found wrong answers".into());
    }
    Ok(())
}
