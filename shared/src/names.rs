//! Command-line words host and worker must agree on, stated once for both.

/// The first argument that makes an application's own executable act as a
/// worker (self-worker mode).
pub const SELF_WORKER_ARG: &str = "--bulkhead-worker";

/// The query every worker version answers with one line,
/// [`PROTOCOL_LINE_PREFIX`] followed by its protocol version.
pub const PROTOCOL_VERSION_ARG: &str = "--protocol-version";

/// The fixed prefix of the answer to [`PROTOCOL_VERSION_ARG`], so a host can
/// read the version of any worker without speaking its protocol. Frozen:
/// never change it.
pub const PROTOCOL_LINE_PREFIX: &str = "bulkhead-protocol ";
