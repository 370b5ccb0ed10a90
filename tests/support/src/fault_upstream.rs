//! A scriptable raw-TCP upstream for fault tests ([`FaultUpstream`]).
//!
//! Real FHIR servers fail in ways an HTTP library will not produce on
//! purpose: a connection reset halfway through a body, a body that stops and
//! never resumes, a byte a second, a chunked body with no last chunk. This
//! upstream speaks HTTP/1.1 by hand so a test can script exactly which bytes
//! go out and when, per request: the test's handler maps each request target
//! to a list of [`Step`]s. It records every request head it reads and counts
//! the connections the peer (the gateway) abandoned while being written to,
//! so a test can also prove the gateway let go of a misbehaving upstream.
//!
//! Threads, not async: every connection gets its own thread, and all of them
//! stop (within ~50 ms) when the `FaultUpstream` is dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One thing the upstream does on a connection after reading the request.
/// When the steps run out the connection is closed normally (FIN).
#[derive(Clone, Debug)]
pub enum Step {
    /// Write these bytes at once.
    Send(Vec<u8>),
    /// Write these bytes one at a time, `every` apart (a slow trickle that
    /// never goes idle for long).
    Trickle(Vec<u8>, Duration),
    /// Write nothing for this long, keeping the connection open.
    Stall(Duration),
    /// Abort the connection with a TCP RST (SO_LINGER 0, then close), not
    /// a FIN: the peer sees "connection reset", not an orderly end.
    Reset,
}

/// What the handler is told about a request.
#[derive(Clone, Debug)]
pub struct FaultRequest {
    pub method: String,
    /// The request target as sent, e.g. `/fhir/Patient/1?x=y`.
    pub target: String,
    /// The whole head (request line and headers).
    pub head: String,
}

type Handler = dyn Fn(&FaultRequest) -> Vec<Step> + Send + Sync;

/// A raw HTTP/1.1 upstream on 127.0.0.1 whose answers are scripted per
/// request; stops when dropped.
pub struct FaultUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<FaultRequest>>>,
    abandoned: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FaultUpstream {
    /// Listens on a free loopback port; `handler` decides every answer.
    pub fn start(handler: impl Fn(&FaultRequest) -> Vec<Step> + Send + Sync + 'static) -> FaultUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fault upstream");
        let addr = listener.local_addr().expect("local_addr");
        let up =
            FaultUpstream { addr, seen: Arc::default(), abandoned: Arc::default(), stop: Arc::default() };
        let handler: Arc<Handler> = Arc::new(handler);
        let (seen, abandoned, stop) = (up.seen.clone(), up.abandoned.clone(), up.stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let conn = Conn {
                    handler: handler.clone(),
                    seen: seen.clone(),
                    abandoned: abandoned.clone(),
                    stop: stop.clone(),
                };
                std::thread::spawn(move || conn.serve(stream));
            }
        });
        up
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The FHIR base to configure the gateway with: `http://{addr}/fhir`.
    pub fn base(&self) -> String {
        format!("http://{}/fhir", self.addr)
    }

    /// Every request read so far, in arrival order.
    pub fn requests(&self) -> Vec<FaultRequest> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many requests went to a target starting with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.requests().iter().filter(|r| r.target.starts_with(prefix)).count()
    }

    /// Connections whose peer went away while a [`Step::Trickle`] or
    /// [`Step::Stall`] was still running (the gateway gave up on them).
    pub fn abandoned(&self) -> usize {
        self.abandoned.load(Ordering::SeqCst)
    }
}

impl Drop for FaultUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

struct Conn {
    handler: Arc<Handler>,
    seen: Arc<Mutex<Vec<FaultRequest>>>,
    abandoned: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Conn {
    fn serve(self, mut stream: TcpStream) {
        let Some(request) = read_request(&mut stream) else { return };
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).push(request.clone());
        for step in (self.handler)(&request) {
            let keep_going = match step {
                Step::Send(bytes) => stream.write_all(&bytes).and_then(|()| stream.flush()).is_ok(),
                Step::Trickle(bytes, every) => self.trickle(&mut stream, &bytes, every),
                Step::Stall(how_long) => self.stall(&stream, how_long),
                Step::Reset => {
                    // A zero linger turns close() into an abortive RST.
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    return;
                }
            };
            if !keep_going {
                return;
            }
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // Let the peer read the FIN before the socket goes (a close with
        // unread request bytes would turn into a RST).
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let _ = stream.read(&mut [0u8; 256]);
    }

    fn trickle(&self, stream: &mut TcpStream, bytes: &[u8], every: Duration) -> bool {
        for byte in bytes {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            if stream.write_all(std::slice::from_ref(byte)).is_err() || peer_closed(stream) {
                self.abandoned.fetch_add(1, Ordering::SeqCst);
                return false;
            }
            std::thread::sleep(every);
        }
        true
    }

    fn stall(&self, stream: &TcpStream, how_long: Duration) -> bool {
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            if peer_closed(stream) {
                self.abandoned.fetch_add(1, Ordering::SeqCst);
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        true
    }
}

/// Has the peer closed its end? (A readable EOF or an error; the gateway
/// sends nothing after its request, so any readable state means it left.)
fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let closed = match stream.peek(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    let _ = stream.set_nonblocking(false);
    closed
}

/// Reads one request: the head, then a `Content-Length` body if any.
fn read_request(stream: &mut TcpStream) -> Option<FaultRequest> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    let mut words = head.split(' ');
    let method = words.next().unwrap_or("").to_owned();
    let target = words.next().unwrap_or("").to_owned();
    Some(FaultRequest { method, target, head })
}

// ---------------------------------------------------------------------------
// Building answers.

/// A response head with `Connection: close` and the given extra header
/// lines (each `Name: value`), ending in the blank line.
pub fn head(status: &str, headers: &[String]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for line in headers {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// The head of a FHIR JSON answer announcing `content_length` body bytes.
pub fn json_head(status: &str, content_length: usize) -> Vec<u8> {
    head(
        status,
        &["Content-Type: application/fhir+json".to_owned(), format!("Content-Length: {content_length}")],
    )
}

/// A complete FHIR JSON answer with a correct `Content-Length`.
pub fn json_response(status: &str, body: &str) -> Vec<u8> {
    let mut out = json_head(status, body.len());
    out.extend_from_slice(body.as_bytes());
    out
}

/// The head of a FHIR JSON answer sent with `Transfer-Encoding: chunked`.
pub fn chunked_head(status: &str) -> Vec<u8> {
    head(status, &["Content-Type: application/fhir+json".to_owned(), "Transfer-Encoding: chunked".to_owned()])
}

/// One chunk of a chunked body (`{hex size}\r\n{bytes}\r\n`); the last
/// chunk is `chunk(b"")`.
pub fn chunk(bytes: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", bytes.len()).into_bytes();
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
    out
}

/// A searchset Bundle holding one attribution Group managed by
/// `organization` (`Organization/…`) with `patients` (bare ids) as members,
/// and a `next` link to `next` when given: the answer to fhirwall's
/// `Group?managing-entity=…` lookup.
pub fn attribution_bundle(
    organization: &str,
    group_id: &str,
    patients: &[&str],
    next: Option<&str>,
) -> String {
    let members = patients
        .iter()
        .map(|p| format!(r#"{{"entity":{{"reference":"Patient/{p}"}}}}"#))
        .collect::<Vec<_>>()
        .join(",");
    let link =
        next.map(|url| format!(r#""link":[{{"relation":"next","url":"{url}"}}],"#)).unwrap_or_default();
    format!(
        r#"{{"resourceType":"Bundle","type":"searchset",{link}"entry":[{{"resource":{{"resourceType":"Group","id":"{group_id}","type":"person","actual":true,"managingEntity":{{"reference":"{organization}"}},"member":[{members}]}}}}]}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch(up: &FaultUpstream) -> (Vec<u8>, Option<std::io::ErrorKind>) {
        let mut stream = TcpStream::connect(up.addr()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(b"GET /fhir/x HTTP/1.1\r\nHost: up\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return (out, None),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return (out, Some(e.kind())),
            }
        }
    }

    #[test]
    fn reset_is_a_reset_and_a_plain_end_is_a_fin() {
        let up = FaultUpstream::start(|_| vec![Step::Send(b"HTTP/1.1 200 OK\r\n".to_vec()), Step::Reset]);
        let (bytes, error) = fetch(&up);
        assert_eq!(
            error,
            Some(std::io::ErrorKind::ConnectionReset),
            "got {:?}",
            String::from_utf8_lossy(&bytes)
        );
        let up = FaultUpstream::start(|_| vec![Step::Send(json_response("200 OK", "{}"))]);
        let (bytes, error) = fetch(&up);
        assert_eq!(error, None);
        assert!(bytes.ends_with(b"\r\n\r\n{}"));
        assert_eq!(up.count("/fhir/x"), 1);
    }

    #[test]
    fn chunks_are_framed() {
        assert_eq!(chunk(b"hello world!!!!!"), b"10\r\nhello world!!!!!\r\n");
        assert_eq!(chunk(b""), b"0\r\n\r\n");
    }
}
