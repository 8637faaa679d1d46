//! The report of a system call the seccomp layer refused (or, in learn mode,
//! let through), as one line on the worker's stderr.
//!
//! The worker's `SIGSYS` handler (or learn-mode listener) writes the line with
//! [`Violation::encode`], which neither allocates nor locks (it runs in a
//! signal handler); the host recognises it by [`MARKER`] and decodes it with
//! [`Violation::parse`]. The line comes from the plugin's own process, so a
//! plugin can forge or suppress reports: they are diagnostics, the filter is
//! what enforces. The host treats every field as hostile input.

/// Start of a report line (the ASCII unit separator keeps it apart from text
/// a plugin prints by accident).
pub const MARKER: &[u8] = b"\x1fbulkhead-seccomp ";

/// Longest encoded report, newline included.
pub const MAX_LINE: usize = 160;

/// "No method in flight" in [`Violation::method`]'s encoding.
const NO_METHOD: u64 = u32::MAX as u64;

/// One refused (or learned) system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// The system call number, as the process passed it.
    pub nr: i64,
    /// The `AUDIT_ARCH_*` value of the call's calling convention.
    pub arch: u32,
    /// The first three arguments (the gating ones: family, type, protocol of
    /// `socket`; the command of `fcntl`, `ioctl`, `prctl`; ...).
    pub args: [u64; 3],
    /// The vtable slot of the call in flight when it happened, if any.
    pub method: Option<u32>,
    /// `true` in learn mode: the call went through.
    pub allowed: bool,
}

impl Violation {
    /// Writes the report line (with its newline) into `buf`; returns its length.
    pub fn encode(&self, buf: &mut [u8; MAX_LINE]) -> usize {
        let mut w = Writer { buf, len: 0 };
        w.put(MARKER);
        w.field(b"nr=", self.nr as u64);
        w.field(b" arch=", u64::from(self.arch));
        for (name, v) in [
            (b" a0=", self.args[0]),
            (b" a1=", self.args[1]),
            (b" a2=", self.args[2]),
        ] {
            w.field(name, v);
        }
        w.field(b" method=", self.method.map_or(NO_METHOD, u64::from));
        w.field(b" allowed=", u64::from(self.allowed));
        w.put(b"\n");
        w.len
    }

    /// Decodes a report line (without its newline); `None` unless it is exactly
    /// what [`encode`](Self::encode) writes.
    pub fn parse(line: &[u8]) -> Option<Violation> {
        let rest = line.strip_prefix(MARKER)?;
        let text = std::str::from_utf8(rest).ok()?;
        let mut fields = text.split(' ');
        let mut next = |name: &str| -> Option<u64> {
            let v = fields.next()?.strip_prefix(name)?.strip_prefix('=')?;
            u64::from_str_radix(v, 16).ok()
        };
        let nr = next("nr")? as i64;
        let arch = u32::try_from(next("arch")?).ok()?;
        let args = [next("a0")?, next("a1")?, next("a2")?];
        let method = match next("method")? {
            NO_METHOD => None,
            m => Some(u32::try_from(m).ok()?),
        };
        let allowed = match next("allowed")? {
            0 => false,
            1 => true,
            _ => return None,
        };
        if fields.next().is_some() {
            return None;
        }
        Some(Violation {
            nr,
            arch,
            args,
            method,
            allowed,
        })
    }
}

/// A bounded byte writer with hexadecimal numbers (no formatting machinery:
/// the encoder runs in a signal handler).
struct Writer<'a> {
    buf: &'a mut [u8; MAX_LINE],
    len: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len < MAX_LINE {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn field(&mut self, name: &[u8], v: u64) {
        self.put(name);
        let mut digits = [0u8; 16];
        let mut n = 0;
        let mut v = v;
        loop {
            digits[n] = b"0123456789abcdef"[(v & 0xf) as usize];
            n += 1;
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        digits[..n].reverse();
        self.put(&digits[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for v in [
            Violation {
                nr: 41,
                arch: 0xc000_003e,
                args: [40, 1, 0],
                method: Some(3),
                allowed: false,
            },
            Violation {
                nr: 0x4000_0029,
                arch: 0x4000_0003,
                args: [u64::MAX, 0, 7],
                method: None,
                allowed: true,
            },
        ] {
            let mut buf = [0u8; MAX_LINE];
            let n = v.encode(&mut buf);
            assert_eq!(buf[n - 1], b'\n');
            assert_eq!(Violation::parse(&buf[..n - 1]), Some(v));
        }
    }

    #[test]
    fn rejects_anything_else() {
        for bad in [
            &b"hello"[..],
            b"\x1fbulkhead-seccomp ",
            b"\x1fbulkhead-seccomp nr=29 arch=c000003e a0=1 a1=2 a2=3 method=ffffffff allowed=2",
            b"\x1fbulkhead-seccomp nr=29 arch=c000003e a0=1 a1=2 a2=3 method=ffffffff allowed=0 x=1",
            b"\x1fbulkhead-seccomp nr=29 arch=1c000003e a0=1 a1=2 a2=3 method=0 allowed=0",
            b"\x1fbulkhead-seccomp nr=zz arch=c000003e a0=1 a1=2 a2=3 method=0 allowed=0",
        ] {
            assert_eq!(Violation::parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
