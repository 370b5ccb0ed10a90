//! Child processes: [`Proc`] runs one with stdout/stderr going to a log file,
//! shows the log's tail when a test panics, and stops it on drop (SIGTERM, then
//! SIGKILL after [`STOP_GRACE`]); [`spawn_until_ready`] starts a server that prints
//! `READY <url>` when it is up.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Grace period between SIGTERM and SIGKILL when a process handle drops.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Log lines shown in panic messages and when a test fails.
const LOG_TAIL_LINES: usize = 80;

/// A child process whose stdout/stderr go to a log file; stopped on drop.
pub(crate) struct Proc {
    name: String,
    pub(crate) child: Child,
    /// Held open so a Medplum upstream notices (stdin EOF) when the test process dies.
    _stdin: Option<ChildStdin>,
    log_path: PathBuf,
    /// The log tail was already put into a panic message: don't print it again on drop.
    pub(crate) log_shown: bool,
}

impl Proc {
    /// Takes charge of a spawned `child` that logs to `log_path`; `stdin` is kept
    /// open for as long as the handle lives.
    pub(crate) fn new(name: &str, child: Child, stdin: Option<ChildStdin>, log_path: PathBuf) -> Proc {
        Proc { name: name.to_string(), child, _stdin: stdin, log_path, log_shown: false }
    }

    pub(crate) fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    pub(crate) fn log_tail(&self) -> String {
        tail(&self.log(), LOG_TAIL_LINES)
    }

    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL. Idempotent.
    pub(crate) fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if !send_sigterm(self.child.id()) {
            let _ = self.child.kill();
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() && !self.log_shown {
            eprintln!(
                "----- {} log (last {LOG_TAIL_LINES} lines, {}) -----\n{}\n----- end of {} log -----",
                self.name,
                self.log_path.display(),
                self.log_tail(),
                self.name
            );
        }
    }
}

/// SIGTERM via the `kill` command (the crate forbids `unsafe`, so no libc here).
pub(crate) fn send_sigterm(pid: u32) -> bool {
    Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn tail(text: &str, n: usize) -> String {
    let mut lines: VecDeque<&str> = VecDeque::with_capacity(n + 1);
    for line in text.lines() {
        if lines.len() == n {
            lines.pop_front();
        }
        lines.push_back(line);
    }
    lines.into_iter().collect::<Vec<_>>().join("\n")
}

pub(crate) fn open_log(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open log file {}: {e}", path.display()))
}

/// Spawns `cmd` with stderr appended to `log_path` and stdout read line by line:
/// the first line starting with `READY ` is returned (its rest, trimmed), every
/// stdout line is also appended to the log. Panics with the log tail when the
/// process exits or stays silent past `timeout`.
pub(crate) fn spawn_until_ready(
    name: &str,
    mut cmd: Command,
    log_path: PathBuf,
    timeout: Duration,
) -> (Proc, String) {
    let stderr_log = open_log(&log_path);
    let keep_stdin = cmd.get_envs().any(|(k, _)| k == "MEDPLUM_UPSTREAM_EXIT_ON_STDIN_EOF");
    cmd.stdin(if keep_stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr_log));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let stdin = child.stdin.take();
    let mut proc = Proc::new(name, child, stdin, log_path.clone());

    let rx = forward_stdout(stdout, open_log(&log_path));

    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(url) => return (proc, url),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed without READY: the process is exiting.
                let status = proc.child.wait().ok();
                proc.log_shown = true;
                panic!(
                    "{name} exited before it was ready ({status:?}); log {}:\n{}",
                    log_path.display(),
                    proc.log_tail()
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(status) = proc.exited() {
                    // Give the reader thread a moment to deliver a READY printed just before exit.
                    if let Ok(url) = rx.recv_timeout(Duration::from_millis(200)) {
                        return (proc, url);
                    }
                    proc.log_shown = true;
                    panic!(
                        "{name} exited before it was ready ({status}); log {}:\n{}",
                        log_path.display(),
                        proc.log_tail()
                    );
                }
                if Instant::now() > deadline {
                    let tail = proc.log_tail();
                    proc.stop();
                    proc.log_shown = true;
                    panic!("{name} not ready after {timeout:?}; log {}:\n{tail}", log_path.display());
                }
            }
        }
    }
}

/// Copies `stdout` line by line into `log` on a thread of its own; the rest of the
/// first line starting with `READY ` (trimmed) is sent on the returned channel,
/// which disconnects when stdout closes.
fn forward_stdout(stdout: ChildStdout, mut log: File) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(log, "{line}");
            if let Some(rest) = line.strip_prefix("READY ")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });
    rx
}
