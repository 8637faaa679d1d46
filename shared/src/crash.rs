//! The report of a worker that dies of a signal, as a few lines on its
//! stderr.
//!
//! The worker's crash handler writes, in this order: one [`Line::Header`]
//! (signal, `si_code`, fault address, method in flight, input length), the
//! call's input in [`Line::Input`] chunks (at most [`MAX_INPUT`] bytes in
//! all), one [`Line::Frame`] per raw return address of the faulting thread,
//! then — the part that is not strictly async-signal-safe — one
//! [`Line::Symbol`] per frame it could name, and [`Line::End`]. Each line
//! starts with [`MARKER`] and is at most [`MAX_LINE`] bytes long. The
//! encoders neither allocate nor lock (they run in a signal handler).
//!
//! The lines come from the plugin's own process, so a plugin can forge or
//! suppress them: the host treats every byte as hostile, and [`Line::parse`]
//! accepts exactly what the encoders write, nothing else.

/// Start of every report line (the ASCII unit separator keeps it apart from
/// text a plugin prints by accident).
pub const MARKER: &[u8] = b"\x1fbulkhead-crash ";

/// Longest report line, newline included.
pub const MAX_LINE: usize = 1200;

/// Input bytes per [`Line::Input`].
pub const INPUT_CHUNK: usize = 512;

/// Most input bytes a report copies.
pub const MAX_INPUT: usize = 4096;

/// Most frames a report lists.
pub const MAX_FRAMES: usize = 64;

/// Longest [`Line::Symbol`] text, in bytes.
pub const MAX_SYMBOL: usize = 400;

/// "No method in flight" in [`Line::Header`]'s encoding.
const NO_METHOD: u64 = u32::MAX as u64;

/// One decoded report line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    /// Starts a report.
    Header {
        /// The signal number.
        signal: i32,
        /// The signal's `si_code` (positive: sent by the kernel for a fault).
        code: i32,
        /// The signal's `si_addr` (the faulting address, for a fault).
        addr: u64,
        /// The vtable slot of the call in flight, if any.
        method: Option<u32>,
        /// The length of that call's input (0 without a call).
        input_len: u64,
    },
    /// The next bytes of the call's input (at most [`INPUT_CHUNK`]).
    Input(Vec<u8>),
    /// The next frame's address (the faulting instruction first).
    Frame(u64),
    /// The name of frame `index` (printable ASCII, at most [`MAX_SYMBOL`] bytes).
    Symbol {
        /// The frame's position in the report.
        index: u32,
        /// Module, symbol and offsets, as the worker resolved them.
        text: &'a str,
    },
    /// The report is complete.
    End,
}

impl Line<'_> {
    /// Decodes a report line (without its newline); `None` unless it is
    /// exactly what one of the encoders writes.
    pub fn parse(line: &[u8]) -> Option<Line<'_>> {
        if line.len() >= MAX_LINE {
            return None;
        }
        let rest = line.strip_prefix(MARKER)?;
        let text = std::str::from_utf8(rest).ok()?;
        if text == "end" {
            return Some(Line::End);
        }
        if let Some(hex) = text.strip_prefix("in=") {
            if hex.is_empty() || hex.len() % 2 != 0 || hex.len() > 2 * INPUT_CHUNK {
                return None;
            }
            return hex_decode(hex).map(Line::Input);
        }
        if let Some(ip) = text.strip_prefix("ip=") {
            return number(ip).map(Line::Frame);
        }
        if let Some(sym) = text.strip_prefix("sym=") {
            let (index, text) = sym.split_once(' ')?;
            let index = u32::try_from(number(index)?).ok()?;
            if text.is_empty() || text.len() > MAX_SYMBOL || !text.bytes().all(printable) {
                return None;
            }
            return Some(Line::Symbol { index, text });
        }
        let mut fields = text.split(' ');
        let mut next = |name: &str| -> Option<u64> { number(fields.next()?.strip_prefix(name)?.strip_prefix('=')?) };
        let signal = i32::try_from(next("sig")?).ok()?;
        let code = u32::try_from(next("code")?).ok()? as i32;
        let addr = next("addr")?;
        let method = match next("method")? {
            NO_METHOD => None,
            m => Some(u32::try_from(m).ok()?),
        };
        let input_len = next("len")?;
        if fields.next().is_some() {
            return None;
        }
        Some(Line::Header {
            signal,
            code,
            addr,
            method,
            input_len,
        })
    }
}

/// Lowercase hexadecimal without leading zeros (as the encoders write it).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    if !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

fn printable(b: u8) -> bool {
    (0x20..0x7f).contains(&b)
}

/// Writes [`Line::Header`] into `buf`; returns its length (newline included).
pub fn encode_header(
    buf: &mut [u8; MAX_LINE],
    signal: i32,
    code: i32,
    addr: u64,
    method: Option<u32>,
    input_len: u64,
) -> usize {
    let mut w = Writer::new(buf);
    w.put(b"sig=");
    w.hex(signal as u32 as u64);
    w.put(b" code=");
    w.hex(code as u32 as u64);
    w.put(b" addr=");
    w.hex(addr);
    w.put(b" method=");
    w.hex(method.map_or(NO_METHOD, u64::from));
    w.put(b" len=");
    w.hex(input_len);
    w.finish()
}

/// Writes [`Line::Input`] for `bytes` (at most [`INPUT_CHUNK`] of them are
/// used; none is an empty line the parser refuses) into `buf`.
pub fn encode_input(buf: &mut [u8; MAX_LINE], bytes: &[u8]) -> usize {
    let mut w = Writer::new(buf);
    w.put(b"in=");
    for &b in &bytes[..bytes.len().min(INPUT_CHUNK)] {
        w.put(&[HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
    }
    w.finish()
}

/// Writes [`Line::Frame`] into `buf`.
pub fn encode_frame(buf: &mut [u8; MAX_LINE], ip: u64) -> usize {
    let mut w = Writer::new(buf);
    w.put(b"ip=");
    w.hex(ip);
    w.finish()
}

/// Writes [`Line::End`] into `buf`.
pub fn encode_end(buf: &mut [u8; MAX_LINE]) -> usize {
    let mut w = Writer::new(buf);
    w.put(b"end");
    w.finish()
}

/// Builds a [`Line::Symbol`] in place: the text is appended piece by piece
/// (non-printable bytes become `?`, the whole is cut at [`MAX_SYMBOL`]).
pub struct SymbolLine<'a> {
    w: Writer<'a>,
    text_start: usize,
}

impl<'a> SymbolLine<'a> {
    /// Starts the line for frame `index`.
    pub fn new(buf: &'a mut [u8; MAX_LINE], index: u32) -> Self {
        let mut w = Writer::new(buf);
        w.put(b"sym=");
        w.hex(u64::from(index));
        w.put(b" ");
        let text_start = w.len;
        SymbolLine { w, text_start }
    }

    /// Appends text.
    pub fn text(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.w.len - self.text_start >= MAX_SYMBOL {
                return;
            }
            self.w.put(&[if printable(b) { b } else { b'?' }]);
        }
    }

    /// Appends `0x` and `v` in hexadecimal.
    pub fn hex(&mut self, v: u64) {
        let mut digits = [0u8; 18];
        let n = hex_digits(v, &mut digits[2..]);
        digits[0] = b'0';
        digits[1] = b'x';
        self.text(&digits[..n + 2]);
    }

    /// Ends the line; returns its length (newline included), or 0 if no text
    /// was appended (the parser refuses an empty name).
    pub fn finish(self) -> usize {
        if self.w.len == self.text_start {
            return 0;
        }
        self.w.finish()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `v`'s hexadecimal digits (no leading zeros) to the front of `out`;
/// returns how many.
fn hex_digits(mut v: u64, out: &mut [u8]) -> usize {
    let mut digits = [0u8; 16];
    let mut n = 0;
    loop {
        digits[n] = HEX[(v & 0xf) as usize];
        n += 1;
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        out[i] = digits[n - 1 - i];
    }
    n
}

/// A bounded byte writer that starts with [`MARKER`] and keeps room for the
/// newline.
struct Writer<'a> {
    buf: &'a mut [u8; MAX_LINE],
    len: usize,
}

impl<'a> Writer<'a> {
    fn new(buf: &'a mut [u8; MAX_LINE]) -> Self {
        let mut w = Writer { buf, len: 0 };
        w.put(MARKER);
        w
    }

    fn put(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len < MAX_LINE - 1 {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn hex(&mut self, v: u64) {
        let mut digits = [0u8; 16];
        let n = hex_digits(v, &mut digits);
        self.put(&digits[..n]);
    }

    fn finish(self) -> usize {
        self.buf[self.len] = b'\n';
        self.len + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(buf: &[u8; MAX_LINE], n: usize) -> &[u8] {
        assert_eq!(buf[n - 1], b'\n');
        &buf[..n - 1]
    }

    #[test]
    fn round_trip() {
        let mut buf = [0u8; MAX_LINE];
        let n = encode_header(&mut buf, 11, 1, 0x10, Some(27), 5000);
        assert_eq!(
            Line::parse(line(&buf, n)),
            Some(Line::Header {
                signal: 11,
                code: 1,
                addr: 0x10,
                method: Some(27),
                input_len: 5000
            })
        );
        let n = encode_header(&mut buf, 6, -6, u64::MAX, None, 0);
        assert_eq!(
            Line::parse(line(&buf, n)),
            Some(Line::Header {
                signal: 6,
                code: -6,
                addr: u64::MAX,
                method: None,
                input_len: 0
            })
        );
        let input: Vec<u8> = (0..=255u8).cycle().take(INPUT_CHUNK + 9).collect();
        let n = encode_input(&mut buf, &input);
        assert!(n <= MAX_LINE);
        assert_eq!(
            Line::parse(line(&buf, n)),
            Some(Line::Input(input[..INPUT_CHUNK].to_vec()))
        );
        let n = encode_frame(&mut buf, 0x7f00_dead_beef);
        assert_eq!(Line::parse(line(&buf, n)), Some(Line::Frame(0x7f00_dead_beef)));
        let n = encode_end(&mut buf);
        assert_eq!(Line::parse(line(&buf, n)), Some(Line::End));
        let mut s = SymbolLine::new(&mut buf, 3);
        s.text(b"fx_basic_write_at+");
        s.hex(0x1b);
        s.text(b" (libfx\n.so)");
        let n = s.finish();
        assert_eq!(
            Line::parse(line(&buf, n)),
            Some(Line::Symbol {
                index: 3,
                text: "fx_basic_write_at+0x1b (libfx?.so)"
            })
        );
        let mut s = SymbolLine::new(&mut buf, 0);
        s.text(&[b'a'; 2 * MAX_SYMBOL]);
        let n = s.finish();
        assert!(matches!(Line::parse(line(&buf, n)), Some(Line::Symbol { text, .. }) if text.len() == MAX_SYMBOL));
        assert_eq!(SymbolLine::new(&mut buf, 0).finish(), 0);
    }

    #[test]
    fn rejects_anything_else() {
        let long = [MARKER, &[b'e'; MAX_LINE][..]].concat();
        let odd = [MARKER, b"in=", &[b'0'; 2 * INPUT_CHUNK + 2][..]].concat();
        for bad in [
            &b"hello"[..],
            MARKER,
            b"\x1fbulkhead-crash end ",
            b"\x1fbulkhead-crash in=",
            b"\x1fbulkhead-crash in=abc",
            b"\x1fbulkhead-crash in=AB",
            b"\x1fbulkhead-crash in=zz",
            b"\x1fbulkhead-crash ip=",
            b"\x1fbulkhead-crash ip=010",
            b"\x1fbulkhead-crash ip=10000000000000000",
            b"\x1fbulkhead-crash ip=-1",
            b"\x1fbulkhead-crash sym=1",
            b"\x1fbulkhead-crash sym=1 ",
            b"\x1fbulkhead-crash sym=1 a\tb",
            b"\x1fbulkhead-crash sym=100000000 a",
            b"\x1fbulkhead-crash sig=b code=1 addr=10 method=1b",
            b"\x1fbulkhead-crash sig=b code=1 addr=10 method=1b len=5 x=1",
            b"\x1fbulkhead-crash sig=100000000 code=1 addr=10 method=1b len=5",
            b"\x1fbulkhead-crash sig=b code=1 addr=10 method=100000000 len=5",
            b"\x1fbulkhead-crash sig=b code=1 addr=10 method=1b len=5\xff",
            &long,
            &odd,
        ] {
            assert_eq!(Line::parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
