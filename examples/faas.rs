//! A FaaS server: functions are Rust shared objects loaded into this process, and each
//! request runs one on the pool, under its service's budget. The HTTP front end is hyper
//! on tokio; requests await their task's `JoinHandle`, so no thread waits per request.
//!
//! ```text
//! cargo run --release --example faas -- --self-test   # start, drive itself, report, exit 0
//! cargo run --release --example faas                   # serve on 127.0.0.1:8080 until Ctrl-C
//! ```
//!
//! Routes: `POST /<service>` runs service `<service>` (the file `libsvc_<service>.so`) on
//! the request body and answers with its output (200). A request killed for its budget
//! answers 503 with the reason, a service panic 500, a service error 422, an unknown
//! service 404, a body over 1 MiB 413, a body that does not arrive within 10 s 408.
//! `GET /stats` answers the serving worker's stats as JSON.
//!
//! # Processes: a supervisor that recycles leaking workers
//!
//! A killed request leaves its thread frozen (or abandoned) for good: that is the price of
//! killing without a process boundary. So by default (`--workers 2`) the server is a
//! supervisor and worker processes, each with its own pool, all accepting on the one
//! listening socket the supervisor opened. A worker whose frozen plus abandoned threads
//! reach `--recycle-at` (default 32), or whose resident memory passes `--recycle-rss-mb`,
//! says so; the supervisor starts its replacement, waits until it is ready, and only then
//! tells the old worker to stop accepting (SIGTERM). The old worker finishes what it has in
//! flight and exits. No connection is refused or dropped on the way: the socket, and the
//! connections queued on it, outlive every worker. (One `SO_REUSEPORT` socket per worker
//! would not do: the connections queued on a socket are reset when its worker closes it,
//! unless `net.ipv4.tcp_migrate_req` is set.) `--workers 0` serves in this one process.
//!
//! # Limits
//!
//! Headers must arrive within 5 s of the connection opening (hyper's header read
//! timeout) and the body within 10 s; at most `--max-connections` (default 512)
//! connections are served at once, the rest wait in the kernel's accept queue; when the
//! process runs out of file descriptors the accept loop backs off (5 ms doubling to 1 s)
//! and says so at most once a second. SIGINT and SIGTERM shut down gracefully: no new
//! connections, the requests in flight finish (or are killed by their budgets), then the
//! pool shuts down.
//!
//! The example services (in `services/`) are built first if needed: `hash`, `json`,
//! `runaway` (never returns), `panic` (panics), `overflow` (overflows its stack).

#[path = "support/services.rs"]
mod support;

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use microsched::{Budget, CallError, JoinError, LoadError, Pool, ServiceCache};

/// The largest request body accepted.
const MAX_BODY: usize = 1 << 20;
/// The request line and headers must arrive within this from the connection's start.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The body must arrive within this once the headers have.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// A request whose task has not ended by then answers 503 (bounded even if a kill is
/// refused, past the pool's frozen-thread cap).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping worker waits for its connections before it exits anyway.
const DRAIN: Duration = Duration::from_secs(30);

/// The budget each service gets: small for the ones meant to misbehave.
fn budget_for(service: &str) -> Budget {
    match service {
        "runaway" => Budget::cpu(Duration::from_millis(20)).grace(Duration::from_millis(5)),
        _ => Budget::cpu(Duration::from_millis(200))
            .and_wall(Duration::from_secs(2))
            .grace(Duration::from_millis(10)),
    }
}

/// Writes one line to fd 1 with `write(2)`: never std's stdout lock, which a killed
/// task could hold for good (the freeze gate abandons rather than freeze a thread inside
/// it, but the abandoned thread keeps it).
fn say(line: &str) {
    let mut bytes = line.as_bytes().to_vec();
    bytes.push(b'\n');
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        // SAFETY: writes from a live buffer of `rest.len()` bytes to fd 1.
        let n = unsafe { libc::write(1, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            return;
        }
        rest = &rest[n as usize..];
    }
}

// ---------------------------------------------------------------------------------------
// Options.

#[derive(Clone, Debug)]
struct Options {
    port: u16,
    workers: usize,
    recycle_at: u64,
    recycle_rss_mb: u64,
    max_connections: usize,
    self_test: bool,
    /// Internal: run as a worker on this inherited listening socket.
    listen_fd: Option<RawFd>,
    services_dir: Option<PathBuf>,
    /// Internal: the supervisor's pid, which a worker checks is still its parent.
    supervisor_pid: Option<i32>,
}

impl Options {
    fn parse() -> Result<Options, String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let value = |name: &str| -> Result<Option<String>, String> {
            match args.iter().position(|a| a == name) {
                Some(i) => args
                    .get(i + 1)
                    .cloned()
                    .map(Some)
                    .ok_or(format!("{name} needs a value")),
                None => Ok(None),
            }
        };
        let number = |name: &str, default: u64| -> Result<u64, String> {
            match value(name)? {
                Some(v) => v
                    .parse()
                    .map_err(|_| format!("{name} needs a number, not {v:?}")),
                None => Ok(default),
            }
        };
        let self_test = args.iter().any(|a| a == "--self-test");
        let options = Options {
            port: number("--port", if self_test { 0 } else { 8080 })? as u16,
            workers: number("--workers", 2)? as usize,
            recycle_at: number("--recycle-at", if self_test { 8 } else { 32 })?,
            recycle_rss_mb: number("--recycle-rss-mb", 4096)?,
            max_connections: number("--max-connections", 512)? as usize,
            self_test,
            listen_fd: value("--listen-fd")?
                .map(|v| {
                    v.parse()
                        .map_err(|_| "--listen-fd needs a number".to_string())
                })
                .transpose()?,
            services_dir: value("--services-dir")?.map(PathBuf::from),
            supervisor_pid: value("--supervisor-pid")?
                .map(|v| {
                    v.parse()
                        .map_err(|_| "--supervisor-pid needs a number".to_string())
                })
                .transpose()?,
        };
        if options.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if options.recycle_at == 0 {
            return Err("--recycle-at must be at least 1".into());
        }
        if options.self_test && options.workers == 0 {
            return Err("--self-test recycles workers: use --workers 1 or more".into());
        }
        Ok(options)
    }
}

// ---------------------------------------------------------------------------------------
// A worker: the pool, the HTTP front end, and its own leak watch.

struct Worker {
    pool: Pool,
    services: Arc<ServiceCache>,
    requests: AtomicU64,
    /// Set once the worker has asked to be recycled (it goes on serving until told).
    recycling: AtomicBool,
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn text(status: StatusCode, message: impl Into<String>) -> Answer {
    let mut message = message.into();
    message.push('\n');
    answer(status, "text/plain; charset=utf-8", message)
}

impl Worker {
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Answer, Infallible> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        if method == hyper::Method::GET && path == "/stats" {
            return Ok(answer(
                StatusCode::OK,
                "application/json",
                self.stats_json(),
            ));
        }
        if method != hyper::Method::POST {
            return Ok(text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST /<service> or GET /stats",
            ));
        }
        let name = path.trim_start_matches('/').to_string();
        let declared = request
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Ok(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body is larger than 1 MiB",
            ));
        }
        let body = Limited::new(request.into_body(), MAX_BODY);
        let input = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
            Err(_) => {
                return Ok(text(
                    StatusCode::REQUEST_TIMEOUT,
                    "the body did not arrive within 10 s",
                ))
            }
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Ok(text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the body is larger than 1 MiB",
                ))
            }
            Ok(Err(e)) => return Ok(text(StatusCode::BAD_REQUEST, format!("body: {e}"))),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        // The service is looked up (and loaded, once, on a first request) inside the
        // task: a `dlopen` never blocks the reactor, and it runs under the budget.
        let services = self.services.clone();
        let file = format!("svc_{name}");
        let handle = self.pool.spawn_with(budget_for(&name), move || {
            services.get(&file).map(|service| service.call(&input))
        });
        let Ok(result) = tokio::time::timeout(REQUEST_TIMEOUT, handle).await else {
            return Ok(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the request did not finish in 30 s",
            ));
        };
        Ok(match result {
            Ok(Ok(Ok(output))) => answer(StatusCode::OK, "application/octet-stream", output),
            Ok(Ok(Err(CallError::Panicked(m)))) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the service panicked: {m}"),
            ),
            Ok(Ok(Err(e))) => text(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            Ok(Err(e @ (LoadError::BadName(_) | LoadError::Open { .. }))) => {
                text(StatusCode::NOT_FOUND, format!("no such service: {e}"))
            }
            Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            Err(JoinError::Killed(k)) => {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("killed: {k}"))
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        })
    }

    /// Threads this worker has lost to kills for good.
    fn leaked_threads(&self) -> u64 {
        let s = self.pool.stats();
        s.frozen_threads + s.abandoned_threads + s.stuck_waker_threads
    }

    fn stats_json(&self) -> String {
        let s = self.pool.stats();
        format!(
            "{{\"pid\":{},\"requests\":{},\"spawned\":{},\"completed\":{},\"panicked\":{},\
             \"cancelled\":{},\"frozen\":{},\"abandoned\":{},\"frozen_threads\":{},\
             \"abandoned_threads\":{},\"kills_cpu_budget\":{},\"kills_wall_deadline\":{},\
             \"kills_stack_overflow\":{},\"handoffs\":{},\"service_loads\":{},\"rss_mb\":{}}}\n",
            std::process::id(),
            self.requests.load(Ordering::Relaxed),
            s.spawned,
            s.completed,
            s.panicked,
            s.cancelled,
            s.frozen,
            s.abandoned,
            s.frozen_threads,
            s.abandoned_threads,
            s.kills_cpu_budget,
            s.kills_wall_deadline,
            s.kills_stack_overflow,
            s.handoffs,
            self.services.loads(),
            rss_mb(),
        )
    }
}

/// This process's resident memory, MiB (`/proc/self/statm`).
fn rss_mb() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    (pages * page) >> 20
}

/// Accept errors that mean "out of a resource", after which accepting again at once
/// would fail again: back off.
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Serves `listener` until SIGINT or SIGTERM, then drains. `announce` lines go to the
/// supervisor (if any) on stdout.
async fn serve(
    listener: std::net::TcpListener,
    worker: Arc<Worker>,
    options: &Options,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let connections = Arc::new(tokio::sync::Semaphore::new(options.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);

    // The leak watch: asks to be recycled (again every second while it stands).
    let watch = {
        let worker = worker.clone();
        let (recycle_at, mut rss_limit) = (options.recycle_at, options.recycle_rss_mb);
        if rss_mb() >= rss_limit {
            // A fresh worker over the limit would be recycled back to back.
            eprintln!(
                "worker {}: resident memory {} MiB is over --recycle-rss-mb {} from the start; \
                 recycling by memory is off",
                std::process::id(),
                rss_mb(),
                rss_limit
            );
            rss_limit = u64::MAX;
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut last = None::<Instant>;
            loop {
                tick.tick().await;
                let (leaked, rss) = (worker.leaked_threads(), rss_mb());
                if (leaked >= recycle_at || rss >= rss_limit)
                    && last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                {
                    worker.recycling.store(true, Ordering::Relaxed);
                    say(&format!("recycle leaked_threads={leaked} rss_mb={rss}"));
                    last = Some(Instant::now());
                }
            }
        })
    };

    say("ready");
    let mut backoff = Duration::from_millis(5);
    let (mut last_report, mut unreported) = (None::<Instant>, 0u64);
    loop {
        // Backpressure: no accept while at the connection limit; the kernel queues them.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = Duration::from_millis(5);
                    stream
                }
                Err(e) => {
                    unreported += 1;
                    if last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        eprintln!("accept: {e} ({unreported} such errors in the last second)");
                        (last_report, unreported) = (Some(Instant::now()), 0);
                    }
                    if out_of_resources(&e) {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                    continue;
                }
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        };
        let worker = worker.clone();
        let connection = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |request| worker.clone().handle(request)),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    // Stop accepting (the socket lives on in the supervisor and the other workers), let
    // the connections in flight finish their requests.
    drop(listener);
    watch.abort();
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("drain: connections still open after {DRAIN:?}; closing them");
    }
    Ok(())
}

/// Runs a worker on `listener` in this process until it is told to stop.
fn run_worker(
    listener: std::net::TcpListener,
    dir: PathBuf,
    options: &Options,
) -> Result<(), String> {
    let pool = Pool::builder()
        .max_frozen((options.recycle_at as usize * 4).max(64))
        .build()
        .map_err(|e| format!("build the pool: {e}"))?;
    let worker = Arc::new(Worker {
        pool,
        // SAFETY: the directory holds the example services, built with `export_service!`.
        services: Arc::new(unsafe { ServiceCache::new(dir, 16) }),
        requests: AtomicU64::new(0),
        recycling: AtomicBool::new(false),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("start tokio: {e}"))?;
    runtime
        .block_on(serve(listener, worker.clone(), options))
        .map_err(|e| format!("serve: {e}"))?;
    drop(runtime);
    let stats = worker.pool.stats();
    worker.pool.shutdown();
    say(&format!(
        "worker {} shut down: {} requests, {} tasks completed, {} killed ({} threads frozen, {} abandoned){}",
        std::process::id(),
        worker.requests.load(Ordering::Relaxed),
        stats.completed,
        stats.cancelled + stats.frozen + stats.abandoned,
        stats.frozen_threads,
        stats.abandoned_threads,
        if worker.recycling.load(Ordering::Relaxed) {
            ", recycled"
        } else {
            ""
        }
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The supervisor.

enum Event {
    Line(u32, String),
}

struct Proc {
    child: Child,
    pid: u32,
    /// When it was started, and whether it has said it is ready.
    started: Instant,
    ready: bool,
    /// The replacement started for it, once it asked to be recycled.
    replacement: Option<u32>,
    /// Told to stop (its replacement is ready), and when.
    retiring: bool,
    retiring_since: Option<Instant>,
}

/// How long a worker may take to say it is ready before it is killed (and replaced).
const READY_WITHIN: Duration = Duration::from_secs(60);

struct Supervisor {
    exe: PathBuf,
    args: Vec<String>,
    events: mpsc::Sender<Event>,
    procs: Vec<Proc>,
    /// Workers recycled (stopped after their replacement was ready, and exited).
    recycled: Arc<AtomicU64>,
    /// Workers that exited without being told to: replaced at once.
    crashed: u64,
    /// After a failed start, no other before this.
    next_try: Instant,
}

impl Supervisor {
    fn start(&mut self) -> Result<u32, String> {
        let mut child = Command::new(&self.exe)
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("start a worker: {e}"))?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or("a worker's stdout")?;
        let events = self.events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if events.send(Event::Line(pid, line)).is_err() {
                    break;
                }
            }
        });
        self.procs.push(Proc {
            child,
            pid,
            started: Instant::now(),
            ready: false,
            replacement: None,
            retiring: false,
            retiring_since: None,
        });
        Ok(pid)
    }

    fn on_line(&mut self, pid: u32, line: &str) {
        if line == "ready" {
            if let Some(p) = self.procs.iter_mut().find(|p| p.pid == pid) {
                p.ready = true;
            }
            // A replacement is ready: its predecessor stops accepting and drains.
            if let Some(old) = self
                .procs
                .iter_mut()
                .find(|p| p.replacement == Some(pid) && !p.retiring)
            {
                old.retiring = true;
                old.retiring_since = Some(Instant::now());
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(old.pid as i32, libc::SIGTERM) };
                say(&format!(
                    "supervisor: worker {pid} ready, retiring worker {}",
                    old.pid
                ));
            }
        } else if line.starts_with("recycle ") {
            let asked = self
                .procs
                .iter()
                .find(|p| p.pid == pid)
                .is_some_and(|p| !p.retiring && p.replacement.is_none());
            if asked {
                // A failed start is tried again at the worker's next ask (every second).
                match self.start() {
                    Ok(new) => {
                        if let Some(p) = self.procs.iter_mut().find(|p| p.pid == pid) {
                            p.replacement = Some(new);
                        }
                        say(&format!(
                            "supervisor: worker {pid} asks to be recycled ({line}); starting worker {new}"
                        ));
                    }
                    Err(e) => say(&format!("supervisor: {e}; worker {pid} serves on")),
                }
            }
        } else {
            say(&format!("[worker {pid}] {line}"));
        }
    }

    /// Reaps exited workers and keeps `want` of them serving: one that exited unasked is
    /// replaced, unless it was a replacement (its predecessor asks again) or being
    /// replaced (its replacement carries on); one that never said it was ready within
    /// [`READY_WITHIN`] is killed, and reaped so on a later pass. A start that fails is
    /// tried again on the next pass.
    fn reap(&mut self, want: usize) {
        for p in &mut self.procs {
            if !p.ready && p.started.elapsed() > READY_WITHIN {
                say(&format!(
                    "supervisor: worker {} never said it was ready; killing it",
                    p.pid
                ));
                let _ = p.child.kill();
            }
            // A retiring worker drains within `DRAIN` (its requests are bounded); one that
            // has not exited well after is killed.
            if p.retiring_since
                .is_some_and(|t| t.elapsed() > DRAIN + Duration::from_secs(10))
            {
                say(&format!(
                    "supervisor: retiring worker {} did not exit; killing it",
                    p.pid
                ));
                let _ = p.child.kill();
            }
        }
        let mut i = 0;
        while i < self.procs.len() {
            let exited = self.procs[i].child.try_wait().ok().flatten();
            let Some(status) = exited else {
                i += 1;
                continue;
            };
            let proc = self.procs.swap_remove(i);
            if proc.retiring {
                self.recycled.fetch_add(1, Ordering::SeqCst);
            } else {
                self.crashed += 1;
                say(&format!(
                    "supervisor: worker {} exited unasked ({status})",
                    proc.pid
                ));
            }
            // A replacement whose predecessor was waiting for it died: it asks again.
            for p in &mut self.procs {
                if p.replacement == Some(proc.pid) {
                    p.replacement = None;
                }
            }
        }
        // Serving workers: those not retiring, counting a pending replacement in place of
        // the worker it replaces.
        let serving = self
            .procs
            .iter()
            .filter(|p| !p.retiring && p.replacement.is_none())
            .count();
        if serving < want && self.next_try <= Instant::now() {
            for _ in serving..want {
                match self.start() {
                    Ok(new) => say(&format!("supervisor: started worker {new}")),
                    Err(e) => {
                        say(&format!("supervisor: {e}; trying again in a second"));
                        self.next_try = Instant::now() + Duration::from_secs(1);
                        break;
                    }
                }
            }
        }
    }

    /// Stops every worker (SIGTERM: they drain), waiting at most `DRAIN` plus a margin.
    fn stop_all(&mut self) {
        for p in &self.procs {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(p.pid as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + DRAIN + Duration::from_secs(5);
        while !self.procs.is_empty() && Instant::now() < deadline {
            self.procs
                .retain_mut(|p| p.child.try_wait().ok().flatten().is_none());
            std::thread::sleep(Duration::from_millis(10));
        }
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// Runs the supervisor until `stop`: `workers` workers on `listener`.
fn supervise(
    listener: &std::net::TcpListener,
    dir: &std::path::Path,
    options: &Options,
    stop: Arc<AtomicBool>,
    recycled: Arc<AtomicU64>,
    ready: mpsc::Sender<()>,
) -> Result<u64, String> {
    let fd = listener.as_raw_fd();
    // The workers inherit the socket: not closed on exec (std opens it close-on-exec).
    // SAFETY: fcntl on a descriptor we own; clears only FD_CLOEXEC.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
        return Err(format!("fcntl: {}", std::io::Error::last_os_error()));
    }
    let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
    let args = vec![
        "--supervisor-pid".into(),
        std::process::id().to_string(),
        "--listen-fd".into(),
        fd.to_string(),
        "--services-dir".into(),
        dir.display().to_string(),
        "--recycle-at".into(),
        options.recycle_at.to_string(),
        "--recycle-rss-mb".into(),
        options.recycle_rss_mb.to_string(),
        "--max-connections".into(),
        options.max_connections.to_string(),
    ];
    let (events, lines) = mpsc::channel();
    let mut supervisor = Supervisor {
        exe,
        args,
        events,
        procs: Vec::new(),
        recycled,
        crashed: 0,
        next_try: Instant::now(),
    };
    let mut pending = Vec::new();
    for _ in 0..options.workers {
        pending.push(supervisor.start()?);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(Event::Line(pid, line)) if line == "ready" => {
                pending.retain(|&p| p != pid);
                supervisor.on_line(pid, &line);
            }
            Ok(Event::Line(pid, line)) => supervisor.on_line(pid, &line),
            Err(_) => {
                supervisor.stop_all();
                return Err("the workers did not start within 60 s".into());
            }
        }
    }
    let _ = ready.send(());
    while !stop.load(Ordering::SeqCst) {
        match lines.recv_timeout(Duration::from_millis(20)) {
            Ok(Event::Line(pid, line)) => supervisor.on_line(pid, &line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        supervisor.reap(options.workers);
    }
    supervisor.stop_all();
    // Lines the workers wrote as they stopped.
    while let Ok(Event::Line(pid, line)) = lines.try_recv() {
        supervisor.on_line(pid, &line);
    }
    Ok(supervisor.crashed)
}

// ---------------------------------------------------------------------------------------
// The self-test: a client on hyper, a runaway storm long enough to recycle a worker.

/// One request on a fresh connection: status and body.
async fn call(port: u16, method: &str, path: &str, body: Vec<u8>) -> Result<(u16, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "127.0.0.1")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, body))
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    Ok,
    Killed,
    Panicked,
}

/// Whether an answer is the right one for the request.
fn right(path: &str, body: &[u8], expect: Expect, status: u16, answer: &[u8]) -> bool {
    match (expect, path) {
        (Expect::Ok, "/hash") => status == 200 && answer == fnv(body).as_bytes(),
        (Expect::Ok, _) => {
            let text = String::from_utf8_lossy(answer);
            status == 200 && text.contains("\"ADA\"") && text.contains("\"keys\":2")
        }
        (Expect::Killed, _) => status == 503 && answer.starts_with(b"killed"),
        (Expect::Panicked, _) => status == 500,
    }
}

/// Rounds of good requests mixed with runaways, panics and stack overflows, 8 at a time,
/// until a worker has been recycled (and a few rounds after); returns whether every answer
/// was right, and the SUMMARY line.
fn self_test(port: u16, recycled: &AtomicU64) -> (bool, String) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the client");
    let started = Instant::now();
    let (mut total, mut counts, mut wrong) = (0usize, [0usize; 3], Vec::new());
    let mut after_recycle = 0;
    let mut round = 0;
    while after_recycle < 3 && round < 60 {
        let mut plan: Vec<(&'static str, Vec<u8>, Expect)> = Vec::new();
        for i in 0..24 {
            if i % 3 == 0 {
                let body = format!("{{\"name\":\"ada\",\"n\":{}}}", round * 100 + i).into_bytes();
                plan.push(("/json", body, Expect::Ok));
            } else {
                plan.push((
                    "/hash",
                    format!("round {round} payload {i}").into_bytes(),
                    Expect::Ok,
                ));
            }
        }
        for _ in 0..3 {
            plan.push(("/runaway", b"spin".to_vec(), Expect::Killed));
        }
        plan.push(("/panic", b"boom".to_vec(), Expect::Panicked));
        if round % 3 == 1 {
            plan.push(("/overflow", b"deep".to_vec(), Expect::Killed));
        }
        // Interleave: the storm among the good requests.
        let n = plan.len();
        plan.rotate_left(round % n);
        total += plan.len();
        let results: Vec<_> = runtime.block_on(async {
            let limit = Arc::new(tokio::sync::Semaphore::new(8));
            let mut tasks = tokio::task::JoinSet::new();
            for (path, body, expect) in plan {
                let limit = limit.clone();
                tasks.spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    let outcome = call(port, "POST", path, body.clone()).await;
                    (path, body, expect, outcome)
                });
            }
            let mut results = Vec::new();
            while let Some(done) = tasks.join_next().await {
                results.extend(done.ok());
            }
            results
        });
        for (path, body, expect, outcome) in results {
            match outcome {
                Ok((status, answer)) if right(path, &body, expect, status, &answer) => {
                    counts[expect as usize] += 1;
                }
                Ok((status, answer)) => wrong.push(format!(
                    "{path} ({expect:?}): {status} {}",
                    String::from_utf8_lossy(&answer).trim()
                )),
                Err(e) => wrong.push(format!("{path} ({expect:?}): {e}")),
            }
        }
        if recycled.load(Ordering::SeqCst) > 0 {
            after_recycle += 1;
        }
        round += 1;
    }
    let (stats_status, stats) = runtime
        .block_on(call(port, "GET", "/stats", Vec::new()))
        .unwrap_or((0, Bytes::new()));
    let (missing, _) = runtime
        .block_on(call(port, "POST", "/no-such-service", Vec::new()))
        .unwrap_or((0, Bytes::new()));
    let alive = stats_status == 200 && stats.starts_with(b"{") && missing == 404;
    let [ok, killed, panicked] = counts;
    let recycled = recycled.load(Ordering::SeqCst);
    for w in wrong.iter().take(10) {
        say(&format!("self-test: WRONG: {w}"));
    }
    say(&format!(
        "self-test: {total} requests in {round} rounds, {:.2?}: {ok} good answered right, \
         {killed} runaways and overflows killed (503), {panicked} panics answered 500, \
         {} wrong or failed; {recycled} workers recycled; an unknown service answered {missing}",
        started.elapsed(),
        wrong.len(),
    ));
    say(&format!(
        "GET /stats: {}",
        String::from_utf8_lossy(&stats).trim()
    ));
    let passed = alive && wrong.is_empty() && recycled >= 1;
    (
        passed,
        format!(
            "SUMMARY faas requests={total} ok={ok} killed={killed} panicked={panicked} \
             recycled={recycled} server_alive={alive}"
        ),
    )
}

// ---------------------------------------------------------------------------------------

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = Options::parse()?;
    if let Some(fd) = options.listen_fd {
        // A worker, started by the supervisor: it goes when the supervisor goes (a
        // supervisor killed outright must not leave workers serving the port).
        // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
        // The supervisor may have died before the flag was set (it may itself be pid 1,
        // in a container: compare with its pid, not with 1).
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() };
        if options.supervisor_pid.is_some_and(|pid| pid != parent) {
            return Err("the supervisor is gone".into());
        }
        // SAFETY: the supervisor passed its listening socket down at this number; this
        // process owns its copy from here on.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        // Close-on-exec again: nothing this worker starts (a service may spawn a process)
        // inherits the socket.
        // SAFETY: fcntl on the descriptor this process owns now.
        unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        let dir = options
            .services_dir
            .clone()
            .ok_or("a worker needs --services-dir")?;
        run_worker(listener, dir, &options)?;
        return Ok(());
    }
    let dir = support::build(false)?;
    let listener = std::net::TcpListener::bind(("127.0.0.1", options.port))?;
    let port = listener.local_addr()?.port();
    println!("listening on http://127.0.0.1:{port}");
    if !options.self_test {
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
    if options.workers == 0 {
        run_worker(listener, dir, &options)?;
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let recycled = Arc::new(AtomicU64::new(0));
    let (ready, workers_ready) = mpsc::channel();
    let supervisor = {
        let (stop, recycled, options) = (stop.clone(), recycled.clone(), options.clone());
        std::thread::spawn(move || supervise(&listener, &dir, &options, stop, recycled, ready))
    };
    let outcome = if options.self_test {
        if workers_ready.recv().is_err() {
            return Err(match supervisor.join() {
                Ok(Err(e)) => e.into(),
                _ => "the supervisor stopped before its workers were ready".into(),
            });
        }
        let (passed, summary) = self_test(port, &recycled);
        stop.store(true, Ordering::SeqCst);
        Some((passed, summary))
    } else {
        None
    };
    let crashed = supervisor.join().map_err(|_| "the supervisor panicked")??;
    say(&format!(
        "supervisor: shut down; {} workers recycled, {crashed} replaced after exiting unasked",
        recycled.load(Ordering::SeqCst)
    ));
    if let Some((passed, summary)) = outcome {
        say(&summary);
        if !passed {
            return Err("the self-test found wrong answers".into());
        }
    }
    Ok(())
}
