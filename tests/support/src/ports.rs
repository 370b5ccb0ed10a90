//! Ports: free loopback ports for the processes a test starts, waiting until
//! something listens on one, and a bare `GET` for readiness polling.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A currently free TCP port on 127.0.0.1.
///
/// The port is released before it is returned, so another process can take it in
/// between; [`Gateway::start`](crate::Gateway::start) retries with fresh ports when
/// its listen address is taken, and the upstreams listen on port 0 and report their
/// real address.
pub fn free_port() -> u16 {
    // Ports handed out by this process are remembered so parallel tests in one
    // binary never get the same port twice, even if the OS would reuse it.
    static HANDED_OUT: OnceLock<Mutex<Vec<u16>>> = OnceLock::new();
    let handed = HANDED_OUT.get_or_init(|| Mutex::new(Vec::new()));
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let mut handed = handed.lock().unwrap_or_else(|e| e.into_inner());
        if !handed.contains(&port) {
            handed.push(port);
            return port;
        }
    }
    panic!("no free port found on 127.0.0.1");
}

/// A dependency-free `GET` for readiness polling; returns the status code.
pub(crate) fn raw_http_get(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.strip_prefix("HTTP/1.1 ").or_else(|| head.strip_prefix("HTTP/1.0 "))?.get(..3)?.parse().ok()
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: impl ToSocketAddrs, timeout: Duration) {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().expect("address").collect();
    let deadline = Instant::now() + timeout;
    loop {
        if addrs.iter().any(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok()) {
            return;
        }
        assert!(Instant::now() < deadline, "nothing listening on {addrs:?} after {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
