//! The names the call paths (pool, plugin, streams, zero-copy replies) use for
//! one request and its outcome: the request and answer shapes of the
//! transport ([`link`](crate::link)) and the call [`Failure`] of a worker
//! process ([`worker_process`](crate::worker_process)).

pub(crate) use crate::link::{Answer, Placed, Request as SessionMsg};
pub(crate) use crate::worker_process::Failure;
