//! The HTTP/1.1 engine under `aurum serve`: connections, request heads, keep-alive, stall
//! deadlines and zero-copy file bodies. What a request means is the handler's business
//! ([`super`]); this file only moves bytes.
//!
//! Why not a library: `tiny_http` 0.12 (used before) gave each connection a thread for its
//! whole life and never timed out a request head, so 1,000 idle connections cost 1,000
//! threads and half-sent heads were held for ever. And its thread pool could leave a
//! connection unread: it counts a worker that was woken but has not yet taken the lock as
//! still waiting, so when two connections are accepted before the woken worker runs, the
//! second is queued instead of getting a new thread, and waits until some thread finishes a
//! whole connection. A node holds its kept-alive connections open while it waits for the
//! queued one, so none finishes: the node hung until its own timeout (issue #23, after 300
//! half-sent heads went away and their threads were exiting). hyper would need an async
//! runtime and still copy every file through user space.
//!
//! The design is nginx's, on threads: every connection is non-blocking and waits in one
//! `epoll` set (one-shot, so exactly one worker owns a connection while it is driven). A
//! worker takes a ready connection, reads what has arrived, answers every complete request in
//! it, and parks the connection again, waiting to read or, when the socket is full, to write
//! the rest of a file with `sendfile`. So `--threads` bounds the requests being worked on,
//! not the connections: an idle or slow connection costs a few kilobytes and no thread. There
//! is one worker per core, and more (up to `--threads`) only while long requests hold every
//! one of them (see [`run`]): more workers than cores only took turns at the same connections.
//! `TCP_NODELAY` is set on every connection: a small answer written after its head must not
//! wait for the client's delayed ACK (Nagle's algorithm made every 10 KB Range read of a
//! kept-alive connection take 44 ms).
//!
//! With TLS (rustls), a connection's bytes pass through its `ServerConnection`: what arrives is
//! decrypted into the same request buffer, answers are encrypted from the same output buffer,
//! and a file body is read from the page cache in 16 KiB pieces and encrypted (no `sendfile`:
//! the kernel would send it in the clear). Handshakes happen on the worker that drives the
//! connection, like any other read, so a slow client costs no thread.
//!
//! Each parked connection has a deadline, and a sweeper closes the connections past it: a
//! request head must be complete within the stall timeout of its first byte (trickling bytes
//! does not extend it), an idle kept-alive connection lasts the stall timeout, and a body
//! being received or sent is cut after the stall timeout without one byte moving.

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::signal::{SigHandler, Signal};
use nix::sys::socket::MsgFlags;

use crate::error::{Error, Result};

/// Largest request head (request line and headers).
const MAX_HEAD: usize = 16 << 10;
/// Most headers in a request head.
const MAX_HEADERS: usize = 48;
/// Largest request body the engine buffers; handlers set their own, smaller limits.
pub(crate) const MAX_BODY: u64 = 8 << 20;
/// File bodies up to this size are read into the answer and sent with its head in one
/// `send`; larger ones go with `sendfile`.
pub(crate) const INLINE_FILE: u64 = 16 << 10;
/// Bytes asked of each `read`.
const READ_CHUNK: usize = 8 << 10;
/// Bytes of a file encrypted at a time for a TLS client.
const TLS_PIECE: usize = 16 << 10;
/// The epoll token of the listening socket; connections count up from 1.
const LISTENER: u64 = 0;
/// The epoll token of the eventfd that says a [`Growing`] file has grown.
const WAKE: u64 = u64::MAX;

/// A request method. Anything else is kept as `Other` for a 405 to name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Head,
    Post,
    Other,
}

/// One request, borrowed from the connection's buffer.
pub(crate) struct Request<'a> {
    pub method: Method,
    /// The method as sent, for messages and the log.
    pub method_name: &'a str,
    /// The request target as sent (path and query).
    pub target: &'a str,
    headers: &'a [httparse::Header<'a>],
    pub body: &'a [u8],
    pub peer: IpAddr,
}

impl Request<'_> {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The first header called `name` (any case), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    }
}

/// A file body still to be sent: bytes `offset..end` of `file`. While one lives it counts in
/// [`transfers`].
struct FileBody {
    file: File,
    offset: i64,
    end: i64,
    /// The file is still being written (a cache tier streaming what its upstream sends): only
    /// what it says is ready may be sent.
    growing: Option<std::sync::Arc<Growing>>,
}

/// A file another thread is still writing, sent to clients as it grows (a cache tier's fetch
/// from its upstream). The writer says how far the file is ready ([`Growing::advance`]) and
/// how it ended ([`Growing::finish`]); a connection that has sent everything ready waits,
/// costing no thread, and is woken when more is. A failed file (a damaged or cut upstream
/// copy) aborts every answer still sending it: the connection is closed before the body is
/// complete, so no client takes it for whole.
#[derive(Default)]
pub(crate) struct Growing {
    state: Mutex<GrowState>,
    ended: std::sync::Condvar,
}

#[derive(Default)]
struct GrowState {
    ready: u64,
    /// `Some(true)` once complete and checked, `Some(false)` once failed.
    end: Option<bool>,
    /// Connections waiting for more: their server's wake queue and their token.
    waiting: Vec<(std::sync::Arc<Wakes>, u64)>,
}

/// What a [`Growing`] file allows from some offset on.
enum Grown {
    /// Bytes are ready up to this offset.
    Upto(u64),
    /// Nothing more yet.
    Starved,
    Failed,
}

impl Growing {
    fn lock(&self) -> std::sync::MutexGuard<'_, GrowState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file is ready up to `ready` bytes: the connections waiting for it are woken.
    pub fn advance(&self, ready: u64) {
        let waiting = {
            let mut st = self.lock();
            st.ready = st.ready.max(ready);
            std::mem::take(&mut st.waiting)
        };
        wake(waiting);
    }

    /// The writer is done: `ok`, the whole file is ready (as advanced); not `ok`, every
    /// answer sending it is aborted.
    pub fn finish(&self, ok: bool) {
        let waiting = {
            let mut st = self.lock();
            st.end = Some(ok);
            std::mem::take(&mut st.waiting)
        };
        self.ended.notify_all();
        wake(waiting);
    }

    /// Whether the writer is done.
    pub fn ended(&self) -> bool {
        self.lock().end.is_some()
    }

    /// Waits until the writer is done; whether the file is complete and good.
    pub fn wait_end(&self) -> bool {
        let mut st = self.lock();
        loop {
            if let Some(ok) = st.end {
                return ok;
            }
            st = self.ended.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// What may be sent from `offset` on.
    fn from(&self, offset: u64) -> Grown {
        let st = self.lock();
        match st.end {
            Some(false) => Grown::Failed,
            _ if st.ready > offset => Grown::Upto(st.ready),
            _ => Grown::Starved,
        }
    }

    /// Registers `token` of `wakes` to be woken when the file grows past `offset` or ends;
    /// false (nothing registered) when it already has.
    fn wait_past(&self, offset: u64, wakes: &std::sync::Arc<Wakes>, token: u64) -> bool {
        let mut st = self.lock();
        if st.ready > offset || st.end.is_some() {
            return false;
        }
        st.waiting.push((wakes.clone(), token));
        true
    }
}

/// A server's queue of connections to wake, and the eventfd in its epoll set that says the
/// queue has some.
struct Wakes {
    fd: nix::sys::eventfd::EventFd,
    tokens: Mutex<Vec<u64>>,
}

fn wake(waiting: Vec<(std::sync::Arc<Wakes>, u64)>) {
    for (wakes, token) in waiting {
        wakes
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(token);
        let _ = wakes.fd.write(1);
    }
}

/// File bodies being sent, in every server of this process.
static TRANSFERS: AtomicUsize = AtomicUsize::new(0);

/// How many file answers (bodies too large to go out with their head) are being sent now.
pub(crate) fn transfers() -> usize {
    TRANSFERS.load(Ordering::Relaxed)
}

impl FileBody {
    fn new(file: File, offset: i64, end: i64) -> FileBody {
        TRANSFERS.fetch_add(1, Ordering::Relaxed);
        FileBody {
            file,
            offset,
            end,
            growing: None,
        }
    }

    /// Where sending may go up to now: `end`, or as far as a growing file is ready; `None`
    /// when a growing file has nothing more yet.
    fn limit(&self) -> std::io::Result<Option<i64>> {
        let Some(g) = &self.growing else {
            return Ok(Some(self.end));
        };
        match g.from(self.offset as u64) {
            Grown::Upto(ready) => Ok(Some(self.end.min(ready as i64))),
            Grown::Starved => Ok(None),
            Grown::Failed => Err(std::io::Error::new(
                ErrorKind::InvalidData,
                "the file being sent failed its check (a damaged or cut upstream copy): \
                 the answer is aborted",
            )),
        }
    }
}

impl Drop for FileBody {
    fn drop(&mut self) {
        TRANSFERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The answer being written: status line and headers go straight into the connection's
/// output buffer (no allocation per request once the buffer has grown), then one body.
pub(crate) struct Reply<'c> {
    out: &'c mut Vec<u8>,
    file: &'c mut Option<FileBody>,
    head_only: bool,
    close: bool,
    keep_alive_header: bool,
    status: u16,
    body_len: u64,
    /// Where this answer starts in `out`, to take it back if its file cannot be read.
    head_start: usize,
}

impl Reply<'_> {
    /// Starts the answer with its status line and the headers every answer has.
    pub fn status(&mut self, status: u16) -> &mut Self {
        self.status = status;
        let _ = write!(
            self.out,
            "HTTP/1.1 {status} {}\r\nDate: {}\r\n",
            reason(status),
            httpdate::HttpDate::from(SystemTime::now())
        );
        if self.close {
            self.out.extend_from_slice(b"Connection: close\r\n");
        } else if self.keep_alive_header {
            self.out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        self
    }

    /// Adds a header (after [`Reply::status`]).
    pub fn header(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Self {
        let _ = write!(self.out, "{name}: {value}\r\n");
        self
    }

    /// Ends the answer with `body`.
    pub fn bytes(&mut self, body: &[u8]) {
        self.end_head(body.len() as u64);
        if !self.head_only {
            self.out.extend_from_slice(body);
        }
    }

    /// Ends the answer with bytes `start..start + len` of `file`: small bodies are copied into
    /// the answer, larger ones are sent from the page cache by `sendfile`. On an error nothing
    /// of the answer is left, and the caller answers again.
    pub fn file(&mut self, file: File, start: u64, len: u64) -> std::io::Result<()> {
        if self.head_only {
            self.end_head(len);
        } else if len <= INLINE_FILE {
            self.end_head(len);
            let at = self.out.len();
            self.out.resize(at + len as usize, 0);
            if let Err(e) = file.read_exact_at(&mut self.out[at..], start) {
                self.out.truncate(self.head_start);
                return Err(e);
            }
        } else {
            self.end_head(len);
            *self.file = Some(FileBody::new(file, start as i64, (start + len) as i64));
        }
        Ok(())
    }

    /// Ends the answer with bytes `start..start + len` of `file`, which another thread is
    /// still writing: sent as `growing` says it is ready, aborted if it fails.
    pub fn growing(&mut self, file: File, growing: std::sync::Arc<Growing>, start: u64, len: u64) {
        self.end_head(len);
        if !self.head_only && len > 0 {
            let mut body = FileBody::new(file, start as i64, (start + len) as i64);
            body.growing = Some(growing);
            *self.file = Some(body);
        }
    }

    fn end_head(&mut self, len: u64) {
        if matches!(self.status, 204 | 304) {
            // These have no body, and so no Content-Length (RFC 9110, 8.6).
            self.out.extend_from_slice(b"\r\n");
            self.head_only = true;
        } else {
            let _ = write!(self.out, "Content-Length: {len}\r\n\r\n");
        }
        self.body_len = if self.head_only { 0 } else { len };
    }
}

/// The reason phrase of the statuses aurum answers with.
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Answers requests; each worker thread has its own (it may hold a catalog connection).
pub(crate) trait Handler {
    /// Answers `rq` into `reply`: [`Reply::status`], any [`Reply::header`]s, then exactly one
    /// of [`Reply::bytes`] or [`Reply::file`].
    fn handle(&mut self, rq: &Request, reply: &mut Reply);
}

/// What one read of a connection brought.
enum Input {
    /// Request bytes.
    Bytes(usize),
    /// TLS records without request bytes (a handshake).
    Nothing,
    /// The client closed its side.
    Eof,
}

impl Input {
    fn bytes(&self) -> usize {
        match self {
            Input::Bytes(n) => *n,
            _ => 0,
        }
    }
}

/// Reads what arrived on `stream` into `into`, decrypted when the connection speaks TLS.
/// `WouldBlock` when nothing more is there.
fn read_input(
    stream: &mut TcpStream,
    tls: Option<&mut rustls::ServerConnection>,
    into: &mut [u8],
) -> std::io::Result<Input> {
    let Some(tls) = tls else {
        return match stream.read(into)? {
            0 => Ok(Input::Eof),
            n => Ok(Input::Bytes(n)),
        };
    };
    loop {
        match tls.reader().read(into) {
            Ok(0) => return Ok(Input::Eof),
            Ok(n) => return Ok(Input::Bytes(n)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if tls.read_tls(stream)? == 0 {
            return Ok(Input::Eof);
        }
        if let Err(e) = tls.process_new_packets() {
            // The alert that says why goes out before the connection closes.
            let _ = tls.write_tls(stream);
            return Err(std::io::Error::new(
                ErrorKind::InvalidData,
                format!("TLS: {e}"),
            ));
        }
        if tls.wants_write() {
            return Ok(Input::Nothing);
        }
    }
}

/// What a connection waits for once a worker is done with it.
enum Next {
    Read,
    Write,
    Close,
}

/// One client connection.
struct Conn {
    stream: TcpStream,
    /// The TLS session, when the server speaks TLS.
    tls: Option<Box<rustls::ServerConnection>>,
    peer: IpAddr,
    /// Bytes received and not yet answered (a partial head, a body, pipelined requests).
    buf: Vec<u8>,
    /// Bytes of answers not yet sent, from `sent` on; then `file`.
    out: Vec<u8>,
    sent: usize,
    file: Option<FileBody>,
    /// Close once the output is sent.
    close: bool,
    /// Its file body is growing and everything ready of it is sent: it waits for more.
    starved: bool,
    /// A head is complete and its body is being received (each byte extends the deadline).
    in_body: bool,
    /// `100 Continue` was sent for the request being received.
    continued: bool,
    deadline: Instant,
}

/// What the workers share: the epoll set and the parked connections.
struct Shared {
    epoll: Epoll,
    listener: TcpListener,
    /// Parked connections by token. A worker removes one to drive it, so exactly one thread
    /// owns a connection at a time; the sweeper removes the ones past their deadline.
    conns: Mutex<HashMap<u64, Conn>>,
    next_token: AtomicU64,
    stalled: Duration,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Connections whose growing file has grown.
    wakes: std::sync::Arc<Wakes>,
    /// Workers running, and of those, driving a connection now.
    alive: AtomicUsize,
    busy: AtomicUsize,
    /// Connections driven so far: whether the workers got anywhere since the last look.
    driven: AtomicU64,
}

/// How often [`run`] looks whether every worker is held up.
const GROW_TICK: Duration = Duration::from_millis(5);

/// How long a worker waits on the set, in milliseconds, before it looks at the stop flag
/// again; a worker [`run`] added ends when nothing came in that time.
const WAIT_MS: u16 = 200;

/// Counts itself in a counter while it lives: a worker that ends or panics, a connection
/// driven to its end or into a panic, is counted no more.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(counter: &'a AtomicUsize) -> Counted<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        Counted(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether the set holds a ready event no worker has taken (an epoll descriptor is readable
/// while it has one; polling it takes nothing).
fn events_waiting(epoll: &Epoll) -> bool {
    let mut fd = libc::pollfd {
        fd: epoll.0.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    unsafe { libc::poll(&mut fd, 1, 0) > 0 }
}

/// Serves `listener` with up to `threads` workers until `stop` is set; connections stalled for
/// `stalled` are closed. Each worker gets its own handler from `handler`. `log` receives one
/// line per answered request.
pub(crate) fn run<H: Handler>(
    listener: TcpListener,
    threads: usize,
    stalled: Duration,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    stop: &AtomicBool,
    handler: impl Fn() -> H + Sync,
) -> Result<()> {
    // `sendfile` has no MSG_NOSIGNAL: a node that goes away mid-answer would kill the server
    // with SIGPIPE (the binary restores its default action for the sake of pipelines).
    // SAFETY: SIG_IGN installs no handler.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }.map_err(errno)?;
    listener.set_nonblocking(true)?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(errno)?;
    epoll
        .add(
            &listener,
            EpollEvent::new(oneshot(EpollFlags::EPOLLIN), LISTENER),
        )
        .map_err(errno)?;
    let wakes = std::sync::Arc::new(Wakes {
        fd: nix::sys::eventfd::EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
        )
        .map_err(errno)?,
        tokens: Mutex::new(Vec::new()),
    });
    epoll
        .add(
            &wakes.fd,
            EpollEvent::new(oneshot(EpollFlags::EPOLLIN), WAKE),
        )
        .map_err(errno)?;
    let shared = Shared {
        wakes,
        epoll,
        listener,
        conns: Mutex::new(HashMap::new()),
        next_token: AtomicU64::new(LISTENER + 1),
        stalled,
        tls,
        alive: AtomicUsize::new(0),
        busy: AtomicUsize::new(0),
        driven: AtomicU64::new(0),
    };
    // One worker per core: more, all waiting on the one epoll set, took turns at the
    // connections, and each small request cost a switch to another thread (64 workers answered
    // 50,000 small requests a second on 4 connections where 2 answered 67,000, as nginx's two
    // processes did). A worker held up by a long request (a delta being made, a file read from
    // a slow disk) must not hold the others' connections: while every worker is busy and none
    // got anywhere for a tick, and a connection is waiting, another is added, up to
    // `threads`; an added worker ends after a while without a connection.
    let threads = threads.max(1);
    let base = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(threads);
    let workers_done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let spawn = |extra: bool| {
            let (shared, handler) = (&shared, &handler);
            let alive = Counted::new(&shared.alive);
            let started = std::thread::Builder::new().spawn_scoped(s, move || {
                let _alive = alive;
                shared.work(&mut handler(), stop, extra);
            });
            if let Err(e) = started {
                log::warn!("could not start another request worker: {e}");
            }
        };
        for _ in 0..base {
            spawn(false);
        }
        if shared.alive.load(Ordering::SeqCst) == 0 {
            return Err(Error::Os(std::io::Error::other(
                "could not start a request worker (see the warnings above): raise the \
                 process or memory limits, or lower --threads",
            )));
        }
        s.spawn(|| shared.sweep(&workers_done));
        let mut seen = shared.driven.load(Ordering::Relaxed);
        while shared.alive.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(GROW_TICK);
            let (alive, driven) = (
                shared.alive.load(Ordering::SeqCst),
                shared.driven.load(Ordering::Relaxed),
            );
            let stuck = driven == seen && shared.busy.load(Ordering::SeqCst) >= alive;
            if stuck
                && alive < threads
                && !stop.load(Ordering::Relaxed)
                && events_waiting(&shared.epoll)
            {
                spawn(true);
            }
            seen = driven;
        }
        workers_done.store(true, Ordering::Relaxed);
        Ok(())
    })
}

fn errno(e: Errno) -> Error {
    Error::Os(std::io::Error::from(e))
}

fn oneshot(flags: EpollFlags) -> EpollFlags {
    flags | EpollFlags::EPOLLONESHOT
}

impl Shared {
    /// One worker: takes ready connections one at a time until `stop`; then finishes the
    /// answers still being sent. An `extra` worker (see [`run`]) also ends when no connection
    /// came for a while.
    fn work<H: Handler>(&self, handler: &mut H, stop: &AtomicBool, extra: bool) {
        // One event per wait: a worker busy with one connection must not hold others' events.
        let mut events = [EpollEvent::empty()];
        let mut line = String::with_capacity(256);
        loop {
            if stop.load(Ordering::Relaxed) && !self.sending() {
                return;
            }
            match self.epoll.wait(&mut events, WAIT_MS) {
                Ok(1) => {}
                Ok(_) if extra => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("waiting for connections: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            let token = events[0].data();
            if token == LISTENER {
                if !stop.load(Ordering::Relaxed) {
                    self.accept();
                }
                continue;
            }
            if token == WAKE {
                self.woken();
                continue;
            }
            let Some(mut conn) = self.lock().remove(&token) else {
                // Closed by the sweeper after the event was queued.
                continue;
            };
            if conn.starved
                && events[0]
                    .events()
                    .intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR)
            {
                // The client went away while its body waited for the upstream.
                continue;
            }
            conn.starved = false;
            let driving = Counted::new(&self.busy);
            match conn.drive(handler, self.stalled, &mut line) {
                Next::Close => conn.close_tls(),
                Next::Read => self.park(token, conn, EpollFlags::EPOLLIN),
                Next::Write if conn.starved => self.park_starved(token, conn),
                Next::Write => self.park(token, conn, EpollFlags::EPOLLOUT),
            }
            drop(driving);
            self.driven.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Conn>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an answer is still being sent (what a stopping server waits for).
    fn sending(&self) -> bool {
        self.lock().values().any(|c| {
            c.file.is_some()
                || c.sent < c.out.len()
                || c.tls.as_ref().is_some_and(|t| t.wants_write())
        })
    }

    /// Accepts every waiting connection, then re-arms the listener.
    fn accept(&self) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    if let Err(e) = stream
                        .set_nonblocking(true)
                        .and_then(|_| stream.set_nodelay(true))
                    {
                        log::debug!("{peer}: {e}");
                        continue;
                    }
                    let tls = match &self.tls {
                        None => None,
                        Some(config) => match rustls::ServerConnection::new(config.clone()) {
                            Ok(c) => Some(Box::new(c)),
                            Err(e) => {
                                log::warn!("{peer}: TLS: {e}");
                                continue;
                            }
                        },
                    };
                    let token = self.next_token.fetch_add(1, Ordering::Relaxed);
                    let conn = Conn {
                        stream,
                        tls,
                        peer: peer.ip(),
                        buf: Vec::new(),
                        out: Vec::new(),
                        sent: 0,
                        file: None,
                        close: false,
                        starved: false,
                        in_body: false,
                        continued: false,
                        deadline: Instant::now() + self.stalled,
                    };
                    let mut conns = self.lock();
                    let ev = EpollEvent::new(oneshot(EpollFlags::EPOLLIN), token);
                    match self.epoll.add(&conn.stream, ev) {
                        Ok(()) => {
                            conns.insert(token, conn);
                        }
                        Err(e) => log::warn!("{peer}: cannot watch the connection: {e}"),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, most likely: pause rather than spin on the
                    // connection still waiting.
                    log::warn!("accepting a connection: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            }
        }
        let mut ev = EpollEvent::new(oneshot(EpollFlags::EPOLLIN), LISTENER);
        if let Err(e) = self.epoll.modify(&self.listener, &mut ev) {
            log::warn!("re-arming the listening socket: {e}");
        }
    }

    /// Puts `conn` back in the set, waiting for `what`. Under the lock, so that the sweeper
    /// cannot close it (and the kernel reuse its descriptor number for a new connection)
    /// between the insert and the re-arm.
    fn park(&self, token: u64, conn: Conn, what: EpollFlags) {
        let mut conns = self.lock();
        let mut ev = EpollEvent::new(oneshot(what | EpollFlags::EPOLLRDHUP), token);
        match self.epoll.modify(&conn.stream, &mut ev) {
            Ok(()) => {
                conns.insert(token, conn);
            }
            Err(e) => log::warn!("{}: cannot watch the connection: {e}", conn.peer),
        }
    }

    /// Parks `conn`, whose growing file has nothing more ready, until the file grows: it
    /// waits for no socket event (it could write, but has nothing to), and the writer's
    /// [`Growing::advance`] wakes it through the eventfd. Under the lock, so that a wake
    /// that comes before it is in the set re-arms it after.
    fn park_starved(&self, token: u64, conn: Conn) {
        let mut conns = self.lock();
        let waits = conn.file.as_ref().and_then(|f| {
            let g = f.growing.as_ref()?;
            Some(g.wait_past(f.offset as u64, &self.wakes, token))
        });
        // Woken already (or nothing to wait for): ready to write at once.
        let what = if waits == Some(true) {
            EpollFlags::empty()
        } else {
            EpollFlags::EPOLLOUT
        };
        let mut ev = EpollEvent::new(oneshot(what), token);
        match self.epoll.modify(&conn.stream, &mut ev) {
            Ok(()) => {
                conns.insert(token, conn);
            }
            Err(e) => log::warn!("{}: cannot watch the connection: {e}", conn.peer),
        }
    }

    /// The eventfd fired: re-arms the connections whose growing file grew, to write.
    fn woken(&self) {
        let _ = self.wakes.fd.read();
        let tokens =
            std::mem::take(&mut *self.wakes.tokens.lock().unwrap_or_else(|e| e.into_inner()));
        {
            let conns = self.lock();
            for token in tokens {
                if let Some(conn) = conns.get(&token) {
                    let mut ev = EpollEvent::new(
                        oneshot(EpollFlags::EPOLLOUT | EpollFlags::EPOLLRDHUP),
                        token,
                    );
                    if let Err(e) = self.epoll.modify(&conn.stream, &mut ev) {
                        log::warn!("{}: cannot watch the connection: {e}", conn.peer);
                    }
                }
            }
        }
        let mut ev = EpollEvent::new(oneshot(EpollFlags::EPOLLIN), WAKE);
        if let Err(e) = self.epoll.modify(&self.wakes.fd, &mut ev) {
            log::warn!("re-arming the wake eventfd: {e}");
        }
    }

    /// Closes the parked connections past their deadline, until the workers are done.
    fn sweep(&self, done: &AtomicBool) {
        let tick = (self.stalled / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(tick);
            let now = Instant::now();
            let expired: Vec<Conn> = {
                let mut conns = self.lock();
                let gone: Vec<u64> = conns
                    .iter()
                    .filter(|(_, c)| c.deadline <= now)
                    .map(|(t, _)| *t)
                    .collect();
                gone.iter().filter_map(|t| conns.remove(t)).collect()
            };
            for c in expired {
                log::debug!("{}: stalled for {:?}: closed", c.peer, self.stalled);
            }
        }
    }
}

impl Conn {
    /// Sends what is pending, answers every complete request received, reads what has
    /// arrived; until the socket would block one way or the other.
    fn drive<H: Handler>(&mut self, handler: &mut H, stalled: Duration, line: &mut String) -> Next {
        // A read that did not fill its buffer emptied the socket: instead of another read
        // that would fail with EAGAIN, the connection is parked (re-arming it re-checks).
        let mut drained = false;
        loop {
            match self.flush(stalled) {
                Ok(true) if self.close => return Next::Close,
                Ok(true) => {}
                Ok(false) => return Next::Write,
                Err(e) => {
                    log::debug!("{}: {e}", self.peer);
                    return Next::Close;
                }
            }
            if self.answer(handler, line) {
                continue;
            }
            if self.buf.len() >= MAX_HEAD + MAX_BODY as usize {
                return Next::Close;
            }
            if drained {
                return Next::Read;
            }
            let was_empty = self.buf.is_empty();
            let at = self.buf.len();
            self.buf.resize(at + READ_CHUNK, 0);
            let r = read_input(
                &mut self.stream,
                self.tls.as_deref_mut(),
                &mut self.buf[at..],
            );
            self.buf.truncate(at + r.as_ref().map_or(0, |i| i.bytes()));
            match r {
                Ok(Input::Eof) => return Next::Close,
                // TLS records that held no request bytes (a handshake): send what they call
                // for, read on.
                Ok(Input::Nothing) => {}
                Ok(Input::Bytes(n)) => {
                    // TLS reads until the socket says it would block (rustls may hold more).
                    drained = self.tls.is_none() && n < READ_CHUNK;
                    // A head has the stall timeout from its first byte; a body from its
                    // last.
                    if was_empty || self.in_body {
                        self.deadline = Instant::now() + stalled;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::Read,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("{}: {e}", self.peer);
                    return Next::Close;
                }
            }
        }
    }

    /// Answers the first request in `buf` if it is complete: false when more bytes are
    /// needed.
    fn answer<H: Handler>(&mut self, handler: &mut H, line: &mut String) -> bool {
        if self.buf.is_empty() {
            return false;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        let head_len = match parsed.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if self.buf.len() < MAX_HEAD => return false,
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                return self.refuse(431, "the request head is too large");
            }
            Err(e) => return self.refuse(400, &format!("not an HTTP request: {e}")),
        };
        let rq_headers = parsed.headers;
        let find = |name: &str| {
            rq_headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        if find("Transfer-Encoding").is_some() {
            return self.refuse(411, "send the request body with a Content-Length");
        }
        let body_len = match find("Content-Length").map(|v| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        }) {
            None => 0,
            Some(Some(n)) if n <= MAX_BODY => n as usize,
            Some(Some(_)) => return self.refuse(413, "the request body is too large"),
            Some(None) => return self.refuse(400, "bad Content-Length"),
        };
        if self.buf.len() < head_len + body_len {
            self.in_body = true;
            let expects = find("Expect").is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
            if expects && !self.continued {
                self.continued = true;
                self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                return true;
            }
            return false;
        }
        let version = parsed.version.unwrap_or(1);
        let connection = find("Connection").unwrap_or(b"");
        let has = |token: &[u8]| {
            connection
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
        };
        let keep_alive = if version == 0 {
            has(b"keep-alive")
        } else {
            !has(b"close")
        };
        let Some(body) = self.buf.get(head_len..head_len + body_len) else {
            return self.refuse(400, "bad Content-Length");
        };
        let method_name = parsed.method.unwrap_or("");
        let method = match method_name {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            _ => Method::Other,
        };
        let rq = Request {
            method,
            method_name,
            target: parsed.path.unwrap_or("/"),
            headers: rq_headers,
            body,
            peer: self.peer,
        };
        self.close = !keep_alive;
        let head_start = self.out.len();
        let mut reply = Reply {
            out: &mut self.out,
            file: &mut self.file,
            head_only: method == Method::Head,
            close: self.close,
            keep_alive_header: keep_alive && version == 0,
            status: 0,
            body_len: 0,
            head_start,
        };
        handler.handle(&rq, &mut reply);
        let (status, sent) = (reply.status, reply.body_len);
        // One write per request for the log line; stderr is not buffered.
        line.clear();
        let _ = std::fmt::Write::write_fmt(
            line,
            format_args!(
                "{} {method_name} {} {status} {sent}\n",
                self.peer, rq.target
            ),
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        self.buf.drain(..head_len + body_len);
        if self.buf.capacity() > 64 << 10 && self.buf.len() < 16 << 10 {
            self.buf.shrink_to(16 << 10);
        }
        self.in_body = false;
        self.continued = false;
        true
    }

    /// [`Conn::flush`] through TLS: the output, then the file body in pieces, into the
    /// session; the session's records to the socket.
    fn flush_tls(&mut self, stalled: Duration) -> std::io::Result<bool> {
        let Some(tls) = self.tls.as_deref_mut() else {
            unreachable!("called with TLS only")
        };
        let mut piece = Vec::new();
        loop {
            // Plaintext into the session, as much as its buffer takes.
            while self.sent < self.out.len() {
                let n = tls
                    .writer()
                    .write(self.out.get(self.sent..).unwrap_or_default())?;
                if n == 0 {
                    break;
                }
                self.sent += n;
            }
            if self.sent == self.out.len() {
                self.out.clear();
                self.sent = 0;
                if let Some(f) = &mut self.file {
                    if f.offset < f.end {
                        let Some(limit) = f.limit()? else {
                            // Records already made go out first; then it waits for more.
                            while tls.wants_write() {
                                match tls.write_tls(&mut self.stream) {
                                    Ok(0) => return Err(ErrorKind::WriteZero.into()),
                                    Ok(_) => self.deadline = Instant::now() + stalled,
                                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                        return Ok(false)
                                    }
                                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                                    Err(e) => return Err(e),
                                }
                            }
                            self.starved = true;
                            return Ok(false);
                        };
                        let want = ((limit - f.offset) as usize).min(TLS_PIECE);
                        piece.resize(want, 0);
                        let got = f.file.read_at(&mut piece, f.offset as u64)?;
                        if got == 0 {
                            return Err(std::io::Error::new(
                                ErrorKind::UnexpectedEof,
                                "the file shrank while it was being sent",
                            ));
                        }
                        let taken = tls.writer().write(piece.get(..got).unwrap_or_default())?;
                        f.offset += taken as i64;
                    } else {
                        self.file = None;
                    }
                }
            }
            // Records to the socket.
            while tls.wants_write() {
                match tls.write_tls(&mut self.stream) {
                    Ok(0) => return Err(ErrorKind::WriteZero.into()),
                    Ok(_) => self.deadline = Instant::now() + stalled,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if self.sent == self.out.len() && self.file.is_none() {
                break;
            }
        }
        if self.buf.is_empty() {
            self.deadline = Instant::now() + stalled;
        }
        Ok(true)
    }

    /// Says goodbye to a TLS client (close_notify), if the socket takes it now.
    fn close_tls(mut self) {
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.send_close_notify();
            let _ = tls.write_tls(&mut self.stream);
        }
    }

    /// Answers a request that cannot be read, and closes the connection after it.
    fn refuse(&mut self, status: u16, msg: &str) -> bool {
        self.close = true;
        self.buf.clear();
        let _ = write!(
            self.out,
            "HTTP/1.1 {status} {}\r\nConnection: close\r\nContent-Type: text/plain; \
             charset=utf-8\r\nContent-Length: {}\r\n\r\n{msg}\n",
            reason(status),
            msg.len() + 1
        );
        log::info!("{}: {status} {msg}", self.peer);
        true
    }

    /// Sends the pending output, then the file body; `Ok(false)` when the socket is full.
    fn flush(&mut self, stalled: Duration) -> std::io::Result<bool> {
        if self.tls.is_some() {
            return self.flush_tls(stalled);
        }
        while self.sent < self.out.len() {
            // MSG_MORE: a head followed by a file goes out in full segments with it.
            let more = if self.file.is_some() {
                MsgFlags::from_bits_retain(libc::MSG_MORE)
            } else {
                MsgFlags::empty()
            };
            let flags = more | MsgFlags::MSG_NOSIGNAL;
            match nix::sys::socket::send(
                self.stream.as_raw_fd(),
                self.out.get(self.sent..).unwrap_or_default(),
                flags,
            ) {
                Ok(n) => {
                    self.sent += n;
                    self.deadline = Instant::now() + stalled;
                }
                Err(Errno::EAGAIN) => return Ok(false),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.out.clear();
        self.sent = 0;
        if let Some(f) = &mut self.file {
            while f.offset < f.end {
                let Some(limit) = f.limit()? else {
                    self.starved = true;
                    return Ok(false);
                };
                let count = (limit - f.offset).min(1 << 30) as usize;
                match nix::sys::sendfile::sendfile(
                    self.stream.as_fd(),
                    f.file.as_fd(),
                    Some(&mut f.offset),
                    count,
                ) {
                    Ok(0) => {
                        return Err(std::io::Error::new(
                            ErrorKind::UnexpectedEof,
                            "the file shrank while it was being sent",
                        ))
                    }
                    Ok(n) => {
                        self.deadline = Instant::now() + stalled;
                        if n < count {
                            // The socket is full: wait for room rather than fail a call.
                            return Ok(false);
                        }
                    }
                    Err(Errno::EAGAIN) => return Ok(false),
                    Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.file = None;
        }
        if self.buf.is_empty() {
            // Idle from now: a kept-alive connection lasts the stall timeout.
            self.deadline = Instant::now() + stalled;
        }
        Ok(true)
    }
}
