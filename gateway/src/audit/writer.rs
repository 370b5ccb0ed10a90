//! The append side of the audit log: one writer thread, group commit.
//!
//! Requests hand their serialised AuditEvent to [`AuditLog::append_json`] and wait
//! on a oneshot. The writer thread takes everything queued (up to a batch
//! limit), chains it (seq, prev, hash), writes the batch with one `write`,
//! makes it durable with one `fdatasync`, and only then answers each waiting
//! request with its seq. While one batch is being synced the next one
//! queues, so throughput grows with load instead of being one fsync per
//! request, and the gateway's async workers never block on the disk.
//!
//! Failure: if a write or sync fails, the batch is answered with an error
//! (the requests fail closed) and the file is cut back to its last durable
//! length, so the chain continues from the last acknowledged record. If even
//! that fails, the log is poisoned: every later append fails until restart.
//!
//! Rotation: before a batch, a file at or above `rotate_bytes` is closed and
//! `audit-{next seq}.ndjson` is created (the directory is synced so the new
//! name is durable); the chain continues across files.
//!
//! Recovery (at open): the last record is read from the tail of the last file
//! to continue `seq` and `prev`. Bytes after the last newline are a torn
//! write — a batch a crash interrupted, never acknowledged, since a record is
//! acknowledged only after its newline is synced. They are moved aside to a
//! hidden `.torn-…` file in the audit dir (kept for forensics, ignored by
//! `audit verify`) and cut from the log, so the log verifies again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::AuditError;
use super::chain::{self, Line, ZERO_HASH};

/// Records queued before `append` waits for room (backpressure).
const QUEUE_CAPACITY: usize = 16 * 1024;
/// Largest batch, in records and in bytes.
const MAX_BATCH_RECORDS: usize = 4096;
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// First read size when looking for the last record.
const TAIL_CHUNK: u64 = 64 * 1024;

/// Writer counters (for metrics and the benchmark).
#[derive(Debug, Default)]
pub struct AuditStats {
    pub records: AtomicU64,
    pub batches: AtomicU64,
    pub sync_micros: AtomicU64,
    pub failures: AtomicU64,
    /// Set when a failed write could not be cut back: every append fails
    /// until restart (`/readyz` reports not ready).
    pub poisoned: AtomicBool,
    /// The last durable record: (seq, hash); (0, zeros) for an empty log.
    head: std::sync::Mutex<(u64, String)>,
}

impl AuditStats {
    /// The last durable record's seq and hash: an anchor to keep elsewhere
    /// (`fhirwall audit verify --anchor SEQ:HASH`).
    pub fn head(&self) -> (u64, String) {
        self.head.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_head(&self, seq: u64, hash: &str) {
        *self.head.lock().unwrap_or_else(|e| e.into_inner()) = (seq, hash.to_owned());
    }
}

/// What recovery found when the log was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The seq the next record gets.
    pub next_seq: u64,
    /// The hash of the last record (64 zeros for an empty log).
    pub head: String,
    /// Bytes of a torn final line cut from the last file, and where they went.
    pub torn_bytes: u64,
    pub torn_saved_as: Option<PathBuf>,
    /// The last record's own hash did not match its content (tampering or
    /// damage before this start; `audit verify` names it).
    pub last_record_damaged: bool,
}

struct Pending {
    event: String,
    done: oneshot::Sender<Result<u64, AuditError>>,
}

/// The handle requests append through. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Pending>,
    dir: Arc<PathBuf>,
    stats: Arc<AuditStats>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("dir", &self.dir).finish()
    }
}

impl AuditLog {
    /// Open (or create) the log in `dir`, recover its tail, and start the
    /// writer thread. Files rotate once they reach `rotate_bytes`.
    pub fn open(dir: &Path, rotate_bytes: u64) -> Result<(AuditLog, Recovery), AuditError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| AuditError::Recovery(format!("cannot create {}: {e}", dir.display())))?;
        let (recovery, active) = recover(dir)?;
        let (file, file_len) = match active {
            Some(path) => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(|e| AuditError::Recovery(format!("cannot open {}: {e}", path.display())))?;
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                (Some(file), len)
            }
            None => (None, 0),
        };
        let stats = Arc::new(AuditStats::default());
        stats.set_head(recovery.next_seq - 1, &recovery.head);
        let writer = Writer {
            dir: dir.to_owned(),
            file,
            file_len,
            next_seq: recovery.next_seq,
            prev: recovery.head.clone(),
            rotate_bytes: rotate_bytes.max(1),
            poisoned: None,
            stats: stats.clone(),
        };
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("fhirwall-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::Recovery(format!("cannot start the audit writer: {e}")))?;
        Ok((AuditLog { tx, dir: Arc::new(dir.to_owned()), stats }, recovery))
    }

    /// Append one serialised AuditEvent (compact JSON, no newline) and wait
    /// until it is durable. Returns its seq.
    pub async fn append_json(&self, event: String) -> Result<u64, AuditError> {
        debug_assert!(!event.contains('\n'));
        let (done, wait) = oneshot::channel();
        self.tx.send(Pending { event, done }).await.map_err(|_| AuditError::Closed)?;
        wait.await.map_err(|_| AuditError::Closed)?
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> &AuditStats {
        &self.stats
    }

    /// False once the log cannot be written any more (until restart).
    pub fn healthy(&self) -> bool {
        !self.stats.poisoned.load(Ordering::Relaxed) && !self.tx.is_closed()
    }

    /// Prometheus text for the audit writer's counters.
    pub fn render_metrics(&self) -> String {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "# HELP fhirwall_audit_records_total Audit records made durable.\n\
             # TYPE fhirwall_audit_records_total counter\n\
             fhirwall_audit_records_total {}\n\
             # HELP fhirwall_audit_batches_total Group-committed batches (one fdatasync each).\n\
             # TYPE fhirwall_audit_batches_total counter\n\
             fhirwall_audit_batches_total {}\n\
             # HELP fhirwall_audit_sync_seconds_total Time spent writing and syncing batches.\n\
             # TYPE fhirwall_audit_sync_seconds_total counter\n\
             fhirwall_audit_sync_seconds_total {:.6}\n\
             # HELP fhirwall_audit_failures_total Batches that could not be written (their requests failed closed).\n\
             # TYPE fhirwall_audit_failures_total counter\n\
             fhirwall_audit_failures_total {}\n\
             # HELP fhirwall_audit_healthy 1 while the audit log accepts records.\n\
             # TYPE fhirwall_audit_healthy gauge\n\
             fhirwall_audit_healthy {}\n",
            get(&s.records),
            get(&s.batches),
            get(&s.sync_micros) as f64 / 1e6,
            get(&s.failures),
            u8::from(self.healthy()),
        )
    }
}

struct Writer {
    dir: PathBuf,
    file: Option<File>,
    file_len: u64,
    next_seq: u64,
    prev: String,
    rotate_bytes: u64,
    poisoned: Option<String>,
    stats: Arc<AuditStats>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
        let mut batch: Vec<Pending> = Vec::with_capacity(256);
        while let Some(first) = rx.blocking_recv() {
            let mut bytes = first.event.len();
            batch.push(first);
            while batch.len() < MAX_BATCH_RECORDS && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(p) => {
                        bytes += p.event.len();
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            let result = self.commit(&batch);
            for (i, p) in batch.drain(..).enumerate() {
                let _ = p.done.send(result.as_ref().map(|first| first + i as u64).map_err(Clone::clone));
            }
        }
    }

    /// Chain, write and sync one batch; the seq of its first record.
    fn commit(&mut self, batch: &[Pending]) -> Result<u64, AuditError> {
        if let Some(why) = &self.poisoned {
            return Err(AuditError::Poisoned(why.clone()));
        }
        if self.file.is_none() || self.file_len >= self.rotate_bytes {
            self.rotate().inspect_err(|_| {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
            })?;
        }
        let first = self.next_seq;
        let mut buf = Vec::with_capacity(batch.iter().map(|p| p.event.len() + 180).sum());
        let mut seq = first;
        let mut prev = self.prev.clone();
        for p in batch {
            let hash = chain::link_hash(&prev, p.event.as_bytes());
            chain::write_line(&mut buf, seq, &prev, &hash, &p.event);
            prev = hash;
            seq += 1;
        }
        let started = Instant::now();
        let file = self.file.as_mut().ok_or_else(|| AuditError::Io("no open audit file".into()))?;
        // Another process appending to the same file would break the chain
        // (two nodes given one audit.dir): stop rather than interleave.
        if let Ok(meta) = file.metadata()
            && meta.is_file()
            && meta.len() != self.file_len
        {
            let why = format!(
                "the audit file changed under the writer ({} bytes, expected {}): is another fhirwall using this audit.dir?",
                meta.len(),
                self.file_len
            );
            tracing::error!(%why, "audit log poisoned: every request fails until restart");
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            self.stats.poisoned.store(true, Ordering::Relaxed);
            self.poisoned = Some(why.clone());
            return Err(AuditError::Poisoned(why));
        }
        let written = file.write_all(&buf).and_then(|()| file.sync_data());
        match written {
            Ok(()) => {
                self.file_len += buf.len() as u64;
                self.next_seq = seq;
                self.stats.set_head(seq - 1, &prev);
                self.prev = prev;
                self.stats.records.fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.sync_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                Ok(first)
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, records = batch.len(), "audit write failed: failing the requests closed");
                // Cut back to the last durable length; the chain state was not advanced.
                let rollback = file.set_len(self.file_len).and_then(|()| file.sync_all());
                if let Err(e2) = rollback {
                    let why = format!("write failed ({e}) and the file could not be cut back ({e2})");
                    tracing::error!(%why, "audit log poisoned: every request fails until restart");
                    self.poisoned = Some(why);
                    self.stats.poisoned.store(true, Ordering::Relaxed);
                }
                Err(AuditError::Io(e.to_string()))
            }
        }
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        let path = self.dir.join(chain::file_name(self.next_seq));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| AuditError::Io(format!("cannot create {}: {e}", path.display())))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len != 0 {
            // Only an empty file (a rotation a crash interrupted) may be reused.
            return Err(AuditError::Io(format!("{} exists and is not empty", path.display())));
        }
        sync_dir(&self.dir).map_err(|e| AuditError::Io(format!("syncing {}: {e}", self.dir.display())))?;
        if self.file.is_some() {
            tracing::info!(file = %path.display(), seq = self.next_seq, "audit log rotated");
        }
        self.file = Some(file);
        self.file_len = 0;
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Find the last record, cut a torn tail, and name the file to append to.
fn recover(dir: &Path) -> Result<(Recovery, Option<PathBuf>), AuditError> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        AuditError::Recovery(format!("{what} {}: {e}", path.display()))
    };
    let files = chain::list_files(dir).map_err(|e| io("cannot list", dir, e))?;
    let mut recovery = Recovery {
        next_seq: 1,
        head: ZERO_HASH.to_owned(),
        torn_bytes: 0,
        torn_saved_as: None,
        last_record_damaged: false,
    };
    // Trailing files with no complete record (a crash right after a
    // rotation) are reused if their name fits the chain.
    let mut empty_tail: Vec<(u64, PathBuf)> = Vec::new();
    for (index, (first, path)) in files.iter().enumerate().rev() {
        let is_last = index + 1 == files.len();
        let mut file = OpenOptions::new()
            .read(true)
            .write(is_last)
            .open(path)
            .map_err(|e| io("cannot open", path, e))?;
        let len = file.metadata().map_err(|e| io("cannot stat", path, e))?.len();
        let (complete_len, last_line) = read_tail(&mut file, len).map_err(|e| io("cannot read", path, e))?;
        if complete_len < len {
            if !is_last {
                return Err(AuditError::Recovery(format!(
                    "{} ends with an incomplete line but is not the last file; run `fhirwall audit verify`",
                    path.display()
                )));
            }
            let saved = save_torn(dir, path, &mut file, complete_len, len)
                .map_err(|e| io("cannot save the torn tail of", path, e))?;
            file.set_len(complete_len)
                .and_then(|()| file.sync_all())
                .map_err(|e| io("cannot truncate the torn tail of", path, e))?;
            tracing::warn!(
                file = %path.display(),
                bytes = len - complete_len,
                saved_as = %saved.display(),
                "audit log: cut an incomplete final line (a write a crash interrupted; never acknowledged)"
            );
            recovery.torn_bytes = len - complete_len;
            recovery.torn_saved_as = Some(saved);
        }
        let Some(text) = last_line else {
            empty_tail.push((*first, path.clone()));
            continue;
        };
        let line = Line::parse(&text).map_err(|e| {
            AuditError::Recovery(format!(
                "the last record of {} is unreadable ({e}); run `fhirwall audit verify --dir {}`",
                path.display(),
                dir.display()
            ))
        })?;
        if !line.hash_matches() {
            tracing::error!(seq = line.seq, file = %path.display(), "audit log: the last record does not match its hash; continuing the chain from it (run `fhirwall audit verify`)");
            recovery.last_record_damaged = true;
        }
        recovery.next_seq = line.seq + 1;
        recovery.head = line.hash;
        break;
    }
    // The file to append to is the last one; an empty tail must fit the chain.
    if empty_tail.len() > 1 || empty_tail.iter().any(|(first, _)| *first != recovery.next_seq) {
        return Err(AuditError::Recovery(format!(
            "{} holds empty audit files that do not continue the chain at seq {}; run `fhirwall audit verify`",
            dir.display(),
            recovery.next_seq
        )));
    }
    let active = files.last().map(|(_, path)| path.clone());
    Ok((recovery, active))
}

/// The length up to and including the last `\n`, and the last complete line.
fn read_tail(file: &mut File, len: u64) -> std::io::Result<(u64, Option<String>)> {
    let mut chunk = TAIL_CHUNK;
    loop {
        let start = len.saturating_sub(chunk);
        let mut buf = vec![0u8; (len - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf)?;
        let Some(end) = memchr::memrchr(b'\n', &buf) else {
            if start == 0 {
                return Ok((0, None));
            }
            chunk *= 2;
            continue;
        };
        let complete_len = start + end as u64 + 1;
        let begin = match memchr::memrchr(b'\n', &buf[..end]) {
            Some(p) => p + 1,
            None if start == 0 => 0,
            None => {
                chunk *= 2;
                continue;
            }
        };
        let line = String::from_utf8_lossy(&buf[begin..end]).into_owned();
        return Ok((complete_len, Some(line)));
    }
}

/// Copy bytes `from..len` of `file` to a hidden file beside the log.
fn save_torn(dir: &Path, path: &Path, file: &mut File, from: u64, len: u64) -> std::io::Result<PathBuf> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("audit");
    let target = dir.join(format!(".torn-{name}-{from}"));
    let mut bytes = vec![0u8; (len - from) as usize];
    file.seek(SeekFrom::Start(from))?;
    file.read_exact(&mut bytes)?;
    let mut out = OpenOptions::new().create(true).write(true).truncate(true).open(&target)?;
    out.write_all(&bytes)?;
    out.sync_all()?;
    sync_dir(dir)?;
    Ok(target)
}
