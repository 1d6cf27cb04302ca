//! Audit trail of tool calls: one JSON line per call, written by a background task so the request
//! path never waits on the disk (and, with an OTLP endpoint, one log record per call).

use std::io::Write;

use serde::Serialize;
use tokio::sync::mpsc;

#[derive(Debug, Serialize)]
pub struct AuditRecord {
    pub time: chrono::DateTime<chrono::Utc>,
    pub key_id: String,
    pub project: String,
    pub user_id: String,
    pub server: String,
    pub tool: String,
    pub outcome: &'static str,
    pub duration_ms: f64,
    pub request_bytes: usize,
    pub response_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<serde_json::Value>,
}

/// A request refused on a session that belongs to another credential.
#[derive(Debug, Serialize)]
pub struct SessionRefusal {
    pub time: chrono::DateTime<chrono::Utc>,
    /// Always `session_refused`.
    pub event: &'static str,
    pub key_id: String,
    pub project: String,
    pub user_id: String,
    /// `session::short_id` of the session asked for, never the id itself.
    pub session: String,
    pub reason: &'static str,
}

/// A tool call refused by a rate limit before it reached the upstream.
#[derive(Debug, Serialize)]
pub struct RateLimitedCall {
    pub time: chrono::DateTime<chrono::Utc>,
    /// Always `rate_limited`.
    pub event: &'static str,
    pub key_id: String,
    pub project: String,
    pub user_id: String,
    /// `project`, `key`, `server` or `tool`.
    pub limit: &'static str,
    /// What the limit is on (e.g. `tool github__search`).
    pub subject: String,
    pub retry_after_secs: u64,
}

/// One line of the audit log.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Entry {
    Call(AuditRecord),
    Session(SessionRefusal),
    RateLimited(RateLimitedCall),
}

/// The shortest time between two writes of the log.
const WRITE_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Lines buffered before new ones are dropped (and counted in the log) rather than blocking calls.
const QUEUE: usize = 10_000;

#[derive(Clone)]
pub struct AuditLog {
    tx: Option<mpsc::Sender<Entry>>,
    pub include_arguments: bool,
}

impl AuditLog {
    pub fn disabled() -> Self {
        AuditLog { tx: None, include_arguments: false }
    }

    /// Opens `target` (a path, or `-` for stderr) for appending and starts the writer.
    pub fn open(target: &str, include_arguments: bool) -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stderr())
        } else {
            let mut options = std::fs::OpenOptions::new();
            options.create(true).append(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            Box::new(options.open(target)?)
        };
        let (tx, mut rx) = mpsc::channel::<Entry>(QUEUE);
        std::thread::Builder::new().name("audit-log".into()).spawn(move || {
            let mut out = std::io::BufWriter::new(sink);
            while let Some(record) = rx.blocking_recv() {
                // Records queued meanwhile go out in the same write; the batch is on disk (or
                // stderr) as soon as the queue is empty.
                write_line(&mut out, &record);
                while let Ok(record) = rx.try_recv() {
                    write_line(&mut out, &record);
                }
                let _ = out.flush();
                // Under load, one write per pause rather than one per call (and no wake-up per
                // call); an idle log still writes each record as it comes.
                std::thread::sleep(WRITE_PAUSE);
            }
        })?;
        Ok(AuditLog { tx: Some(tx), include_arguments })
    }

    /// Whether records are kept at all, in the file or as OTLP logs (callers skip preparing them
    /// otherwise).
    pub fn is_enabled(&self) -> bool {
        self.tx.is_some() || crate::telemetry::audit_exported()
    }

    pub fn record(&self, record: AuditRecord) {
        crate::telemetry::export_audit(&record);
        self.send(Entry::Call(record));
    }

    pub fn record_session_refusal(&self, refusal: SessionRefusal) {
        self.send(Entry::Session(refusal));
    }

    pub fn record_rate_limited(&self, principal: &crate::auth::Principal, limited: &crate::rate_limit::Limited) {
        if !self.is_enabled() {
            return;
        }
        self.send(Entry::RateLimited(RateLimitedCall {
            time: chrono::Utc::now(),
            event: "rate_limited",
            key_id: principal.key_id.to_string(),
            project: principal.project_name.to_string(),
            user_id: principal.user_id.to_string(),
            limit: limited.kind,
            subject: limited.subject.clone(),
            retry_after_secs: limited.retry_after_secs,
        }));
    }

    fn send(&self, entry: Entry) {
        if let Some(tx) = &self.tx
            && tx.try_send(entry).is_err()
        {
            tracing::warn!("audit log queue full; a record was dropped");
        }
    }
}

fn write_line(out: &mut impl Write, record: &Entry) {
    if serde_json::to_writer(&mut *out, record).is_ok() {
        let _ = out.write_all(b"\n");
    }
}
