//! The `i32` status codes fidius plugin methods return.

use crate::abi::{
    STATUS_BUFFER_TOO_SMALL, STATUS_OK, STATUS_PANIC, STATUS_PLUGIN_ERROR, STATUS_SERIALIZATION_ERROR,
    STATUS_STREAM_END,
};

/// A decoded status code. Unknown codes are kept, never guessed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `0`: success.
    Ok,
    /// `-1`: the Arena was too small.
    BufferTooSmall,
    /// `-2`: the plugin failed to (de)serialize.
    SerializationError,
    /// `-3`: the method returned `Err(PluginError)`.
    PluginError,
    /// `-4`: the method panicked.
    Panic,
    /// `-5`: a server stream ended.
    StreamEnd,
    /// Any other code, reported as-is.
    Unknown(i32),
}

impl Status {
    /// Decodes a raw code; every value maps to exactly one variant.
    pub fn from_raw(code: i32) -> Self {
        match code {
            STATUS_OK => Self::Ok,
            STATUS_BUFFER_TOO_SMALL => Self::BufferTooSmall,
            STATUS_SERIALIZATION_ERROR => Self::SerializationError,
            STATUS_PLUGIN_ERROR => Self::PluginError,
            STATUS_PANIC => Self::Panic,
            STATUS_STREAM_END => Self::StreamEnd,
            other => Self::Unknown(other),
        }
    }

    /// The raw code.
    pub fn code(self) -> i32 {
        match self {
            Self::Ok => STATUS_OK,
            Self::BufferTooSmall => STATUS_BUFFER_TOO_SMALL,
            Self::SerializationError => STATUS_SERIALIZATION_ERROR,
            Self::PluginError => STATUS_PLUGIN_ERROR,
            Self::Panic => STATUS_PANIC,
            Self::StreamEnd => STATUS_STREAM_END,
            Self::Unknown(code) => code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes() {
        assert_eq!(Status::from_raw(0), Status::Ok);
        assert_eq!(Status::from_raw(-1), Status::BufferTooSmall);
        assert_eq!(Status::from_raw(-2), Status::SerializationError);
        assert_eq!(Status::from_raw(-3), Status::PluginError);
        assert_eq!(Status::from_raw(-4), Status::Panic);
        assert_eq!(Status::from_raw(-5), Status::StreamEnd);
        assert_eq!(Status::from_raw(7), Status::Unknown(7));
        assert_eq!(Status::from_raw(i32::MIN), Status::Unknown(i32::MIN));
    }

    #[test]
    fn round_trip() {
        for code in [-6, -5, -4, -3, -2, -1, 0, 1, 42, i32::MAX, i32::MIN] {
            assert_eq!(Status::from_raw(code).code(), code);
        }
    }
}
