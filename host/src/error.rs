//! Every error bulkhead returns, one enum per layer, each variant carrying what
//! a caller branches on.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub use bulkhead_shared::protocol::{CallFault, LoadFailure};

use crate::crash::CrashReport;
pub use crate::exit::Exit;

/// The `PluginError` a method returned (status `-3`), exactly as the plugin sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct PluginError {
    /// Machine-readable code, e.g. `"NOT_FOUND"`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Optional structured details (JSON text).
    pub details: Option<String>,
}

/// The worker sent something the protocol does not allow. The worker is killed
/// and replaced; nothing from it was trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame's length prefix exceeds the configured maximum message size.
    #[error("worker sent a {len}-byte frame, over the {max}-byte limit")]
    FrameTooLarge {
        /// Claimed length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A zero-length frame.
    #[error("worker sent an empty frame")]
    EmptyFrame,
    /// A frame that does not decode.
    #[error("malformed message from worker: {0}")]
    Malformed(String),
    /// A well-formed message that is not allowed at this point.
    #[error("unexpected {got} message from worker")]
    Unexpected {
        /// Which message arrived.
        got: &'static str,
    },
    /// An answer for another request.
    #[error("answer carries request id {got}, expected {expected}")]
    WrongRequestId {
        /// Id of the request in flight.
        expected: u64,
        /// Id in the answer.
        got: u64,
    },
    /// The worker closed the socket but kept running.
    #[error("worker closed its socket without exiting")]
    ChannelClosed,
    /// The worker answered the handshake with another protocol version.
    #[error("worker speaks protocol version {worker}, host speaks {host}")]
    Version {
        /// Host's version.
        host: u32,
        /// Worker's version.
        worker: u32,
    },
    /// The handshake info is inconsistent (e.g. an absurd method count).
    #[error("worker reported invalid plugin info: {0}")]
    BadInfo(String),
    /// A socket error other than end-of-stream.
    #[error("socket error talking to worker: {0}")]
    Io(String),
}

/// Building a [`Supervisor`](crate::Supervisor) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No worker binary in any place bulkhead looks.
    #[error("bulkhead-worker binary not found; looked in: {}", display_paths(searched))]
    WorkerNotFound {
        /// Every candidate path, in search order.
        searched: Vec<PathBuf>,
    },
    /// The worker speaks another protocol version than this host (they come
    /// from different bulkhead releases).
    #[error(
        "worker {} speaks protocol version {worker_version}, this host speaks {host}; \
         use the worker from the same bulkhead release",
        worker.display()
    )]
    WorkerVersion {
        /// The worker binary.
        worker: PathBuf,
        /// The host's protocol version.
        host: u32,
        /// The worker's protocol version.
        worker_version: u32,
    },
    /// The worker did not answer the protocol-version query: not a bulkhead
    /// worker, one too old to have the query, or (self-worker mode) an
    /// executable whose `main` does not call
    /// [`worker_main_if_requested`](crate::worker_main_if_requested).
    #[error("worker {} is unusable (this host speaks protocol {host}): {reason}", worker.display())]
    WorkerUnusable {
        /// The worker binary.
        worker: PathBuf,
        /// The host's protocol version.
        host: u32,
        /// What went wrong.
        reason: String,
    },
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loading a plugin failed. The host process is unaffected.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The worker examined the plugin and refused it; `reason` says why.
    #[error("cannot load {}: {reason}", path.display())]
    Rejected {
        /// The plugin path.
        path: PathBuf,
        /// The worker's reason.
        reason: LoadFailure,
    },
    /// The worker process died while loading (e.g. a crashing library
    /// constructor or `construct`).
    #[error("worker died while loading {}: {exit}{}{}", path.display(), crash_suffix(crash), stderr_suffix(stderr))]
    WorkerDied {
        /// The plugin path.
        path: PathBuf,
        /// How the worker ended.
        exit: Exit,
        /// The tail of the worker's stderr.
        stderr: String,
        /// What the worker reported about its crash, if it died of a signal
        /// and could say (a crashing library constructor, say).
        crash: Option<Box<CrashReport>>,
    },
    /// Loading did not finish within the load timeout; the worker was killed.
    #[error("loading {} timed out after {elapsed:?} (limit {limit:?})", path.display())]
    Timeout {
        /// The plugin path.
        path: PathBuf,
        /// Time spent.
        elapsed: Duration,
        /// The load timeout.
        limit: Duration,
    },
    /// The worker broke the handshake protocol.
    #[error("worker for {} broke the protocol while loading", path.display())]
    Protocol {
        /// The plugin path.
        path: PathBuf,
        /// What it did.
        #[source]
        error: ProtocolError,
    },
    /// The worker process could not be started.
    #[error("cannot start worker {}: {message}", worker.display())]
    Spawn {
        /// The worker binary.
        worker: PathBuf,
        /// The OS error.
        message: String,
    },
    /// A signature is required and `<library>.sig` does not exist.
    #[error("{} is not signed: {} not found", path.display(), sig.display())]
    SignatureRequired {
        /// The plugin path.
        path: PathBuf,
        /// Where the signature was looked for.
        sig: PathBuf,
    },
    /// The signature is malformed or no trusted key verifies the library's bytes.
    #[error("signature of {} rejected: {reason}", path.display())]
    SignatureInvalid {
        /// The plugin path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The library (or its signature) could not be read or sealed in memory.
    #[error("cannot read {}: {message}", path.display())]
    Library {
        /// The file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// The config value could not be encoded with bincode.
    #[error("cannot encode plugin config: {0}")]
    Config(String),
    /// A [`PluginSpec`](crate::PluginSpec) setting is out of range; no worker was started.
    #[error("invalid plugin spec: {setting}: {reason}")]
    InvalidSpec {
        /// The setter, e.g. `"workers"`.
        setting: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// The supervisor has been shut down.
    #[error("supervisor is shut down")]
    ShutDown,
}

/// ` in method 27 at address 0x10` (what the crash report adds to the message).
fn crash_suffix(crash: &Option<Box<CrashReport>>) -> String {
    let Some(c) = crash else {
        return String::new();
    };
    let mut s = match c.method {
        Some(m) => format!(" in method {m}"),
        None => " outside any call".to_string(),
    };
    if let Some(a) = c.fault_address {
        s.push_str(&format!(" at address {a:#x}"));
    }
    s
}

impl CallError {
    /// Decodes method `index`'s output as an `R`, or says which method, which
    /// type and what did not match.
    pub(crate) fn decode_return<R: serde::de::DeserializeOwned>(index: u32, bytes: &[u8]) -> Result<R, CallError> {
        bulkhead_shared::wire::decode(bytes).map_err(|e| {
            // bincode reports running out of input as an I/O error with an empty message.
            let reason = if e.0.starts_with("io error") {
                "the output ends before a value of that type is complete".to_string()
            } else {
                e.0
            };
            CallError::ReturnType {
                index,
                expected: std::any::type_name::<R>(),
                len: bytes.len(),
                reason,
            }
        })
    }
}

/// `t` as an RFC 3339 UTC timestamp with milliseconds, e.g.
/// `2026-12-05T13:57:01.123Z` (before 1970: the raw value).
pub(crate) fn utc(t: SystemTime) -> String {
    let Ok(since_epoch) = t.duration_since(SystemTime::UNIX_EPOCH) else {
        return format!("{t:?}");
    };
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {}", stderr.trim_end())
    }
}

/// A call failed. Which variant says exactly what happened; the host is fine.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// Status `-1` even after the arena was grown once.
    #[error("plugin output does not fit the arena (needed {needed:?} bytes)")]
    BufferTooSmall {
        /// The size the plugin asked for, if it said.
        needed: Option<u32>,
    },
    /// Status `-2` (SERIALIZATION_ERROR): the plugin could not decode the
    /// arguments as method `index`'s parameter types — the argument tuple sent
    /// does not match the method's signature (or, rarely, the plugin could not
    /// encode its own result).
    #[error(
        "method {index}: the arguments did not decode as the method's parameter types \
         (the plugin answered SERIALIZATION_ERROR; check the argument tuple's types and order)"
    )]
    Serialization {
        /// The method index called.
        index: u32,
    },
    /// Method `index` answered, but its output does not decode as the return
    /// type the caller asked for (`expected`): the caller's type does not match
    /// the method's.
    #[error("method {index}: its {len}-byte output does not decode as `{expected}`: {reason}")]
    ReturnType {
        /// The method index called.
        index: u32,
        /// The Rust type the caller asked for (`std::any::type_name`).
        expected: &'static str,
        /// Length of the output.
        len: usize,
        /// What did not match.
        reason: String,
    },
    /// The host could not decode a payload of the plugin's (an error or panic
    /// message) as the fidius contract says it is encoded.
    #[error("cannot decode plugin output: {0}")]
    Deserialization(String),
    /// The host could not encode the arguments.
    #[error("cannot encode arguments: {0}")]
    ArgumentEncoding(String),
    /// The input exceeds the plugin's maximum message size (not sent).
    #[error("input of {len} bytes exceeds the {max}-byte message limit")]
    InputTooLarge {
        /// Input length.
        len: usize,
        /// The limit ([`PluginSpec::max_message_size`](crate::PluginSpec::max_message_size)).
        max: u32,
    },
    /// Status `-3`: the method returned `Err(PluginError)`.
    #[error("plugin error {0}")]
    Plugin(PluginError),
    /// Status `-4`: the method panicked.
    #[error("plugin panicked: {0}")]
    Panic(String),
    /// A status code outside the fidius contract.
    #[error("plugin returned unknown status code {code}")]
    UnknownStatus {
        /// The code.
        code: i32,
    },
    /// The method index is not below the plugin's method count (no round trip made).
    #[error("method index {index} out of range: the plugin has {count} methods")]
    InvalidMethodIndex {
        /// The index asked for.
        index: u32,
        /// The plugin's method count.
        count: u32,
    },
    /// An optional method the plugin does not implement (its capability bit is
    /// clear); no request was sent.
    #[error("method {index} is not implemented by this plugin (capability {capability:#x} not in {capabilities:#x})")]
    NotImplemented {
        /// The method index.
        index: u32,
        /// The capability mask asked for.
        capability: u64,
        /// The plugin's capability bits.
        capabilities: u64,
    },
    /// The method slot cannot be called this way (e.g. a server-streaming slot).
    #[error("method {index} is unsupported: {what}")]
    Unsupported {
        /// The method index.
        index: u32,
        /// Why.
        what: &'static str,
    },
    /// The plugin broke the ABI contract (caught by the worker).
    #[error("plugin broke the ABI contract: {0}")]
    Contract(CallFault),
    /// The worker process died during the call.
    #[error("worker died: {exit}{}{}", crash_suffix(crash), stderr_suffix(stderr))]
    WorkerDied {
        /// How it ended.
        exit: Exit,
        /// The last bytes (at most 16 KiB) it wrote to stderr (crash report
        /// lines excluded).
        stderr: String,
        /// What the worker reported about its crash, if it died of a signal
        /// and could say: the method in flight, a copy of its input, the
        /// faulting address and thread's frames. See
        /// [`CrashReport::replay`] to replay the call with the CLI.
        crash: Option<Box<CrashReport>>,
    },
    /// The call hit its deadline; the worker (and its process group) was killed.
    #[error("call timed out after {elapsed:?} (limit {limit:?})")]
    Timeout {
        /// Time from the call's start to the error.
        elapsed: Duration,
        /// The timeout in force.
        limit: Duration,
    },
    /// The worker broke the protocol; it was killed and will be replaced.
    #[error("worker broke the protocol")]
    Protocol(#[source] ProtocolError),
    /// No worker became free before the call's deadline.
    #[error("no worker became free within {waited:?}")]
    Busy {
        /// Time spent waiting.
        waited: Duration,
    },
    /// Too many calls are already waiting for a worker.
    #[error("plugin overloaded: {limit} calls already waiting")]
    Overloaded {
        /// The queue limit.
        limit: usize,
    },
    /// The restart budget is spent; calls fail fast until `reset()` (or the cool-down).
    #[error("plugin failed at {} after {restarts} restarts: {reason}", utc(*since))]
    Failed {
        /// The failure that spent the budget.
        reason: String,
        /// When the plugin was marked failed.
        since: SystemTime,
        /// Restarts made in the window.
        restarts: u32,
    },
    /// Waiting out the restart backoff would pass the call's deadline.
    #[error("worker restart is backing off for {retry_in:?}")]
    Backoff {
        /// Time until the next restart is allowed.
        retry_in: Duration,
    },
    /// Replacing a dead worker failed.
    #[error("restarting the worker failed")]
    Restart(#[source] Box<LoadError>),
    /// The plugin or its supervisor has been shut down.
    #[error("plugin is shut down")]
    ShutDown,
}

impl CallError {
    /// A short stable name of the variant, used for statistics and events.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::BufferTooSmall { .. } => "buffer_too_small",
            CallError::Serialization { .. } => "serialization",
            CallError::ReturnType { .. } => "return_type",
            CallError::Deserialization(_) => "deserialization",
            CallError::ArgumentEncoding(_) => "argument_encoding",
            CallError::InputTooLarge { .. } => "input_too_large",
            CallError::Plugin(_) => "plugin",
            CallError::Panic(_) => "panic",
            CallError::UnknownStatus { .. } => "unknown_status",
            CallError::InvalidMethodIndex { .. } => "invalid_method_index",
            CallError::Unsupported { .. } => "unsupported",
            CallError::NotImplemented { .. } => "not_implemented",
            CallError::Contract(_) => "contract",
            CallError::WorkerDied { .. } => "worker_died",
            CallError::Timeout { .. } => "timeout",
            CallError::Protocol(_) => "protocol",
            CallError::Busy { .. } => "busy",
            CallError::Overloaded { .. } => "overloaded",
            CallError::Failed { .. } => "failed",
            CallError::Backoff { .. } => "backoff",
            CallError::Restart(_) => "restart",
            CallError::ShutDown => "shut_down",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_display() {
        assert_eq!(Exit::Code(3).to_string(), "exit code 3");
        assert_eq!(
            Exit::Signal {
                signal: 11,
                core_dumped: false
            }
            .to_string(),
            "signal 11 (SIGSEGV)"
        );
        assert_eq!(
            Exit::Signal {
                signal: 6,
                core_dumped: true
            }
            .to_string(),
            "signal 6 (SIGABRT), core dumped"
        );
    }

    #[test]
    fn failed_shows_a_utc_time() {
        let at = |secs: u64, ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms);
        assert_eq!(utc(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(utc(at(1_796_046_621, 123)), "2026-11-30T13:50:21.123Z");
        let e = CallError::Failed {
            reason: "worker died: signal 11 (SIGSEGV)".into(),
            since: at(1_796_046_621, 123),
            restarts: 5,
        };
        assert_eq!(
            e.to_string(),
            "plugin failed at 2026-11-30T13:50:21.123Z after 5 restarts: worker died: signal 11 (SIGSEGV)"
        );
    }

    #[test]
    fn messages_do_not_repeat_sources() {
        let e = CallError::Protocol(ProtocolError::ChannelClosed);
        assert_eq!(e.to_string(), "worker broke the protocol");
        assert_eq!(
            std::error::Error::source(&e).unwrap().to_string(),
            "worker closed its socket without exiting"
        );
    }
}
