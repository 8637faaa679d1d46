//! Crash reports: what a worker that died of a signal said about it on its
//! stderr (the lines of [`bulkhead_shared::crash`]), assembled by the output
//! loop and attached to [`CallError::WorkerDied`](crate::CallError::WorkerDied)
//! and [`LoadError::WorkerDied`](crate::LoadError::WorkerDied).
//!
//! Every line comes from the plugin's process and is treated as hostile:
//! each is parsed strictly, the report is bounded (4 KiB of input, 64
//! frames of at most 400 bytes of text) and only the last one is kept. A
//! report is attached only when the worker really died of the signal it
//! names, so a plugin that forges one and exits otherwise is not believed.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bulkhead_shared::crash::{Line, MAX_FRAMES, MAX_INPUT};

use crate::exit::Exit;

/// What a worker that died of a signal reported about the crash: the
/// signal, where it faulted, the call in flight with (a bounded copy of) its
/// input, and the faulting thread's frames.
///
/// The worker writes it from its crash handler, so it describes the plugin's
/// process as the plugin left it: a hostile plugin could forge it (the host
/// only checks that the worker died of the signal the report names). Use it
/// to diagnose and to [`replay`](Self::replay) a crash, not as evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CrashReport {
    /// The signal number (11 = SIGSEGV, 7 = SIGBUS, 4 = SIGILL, 8 = SIGFPE,
    /// 6 = SIGABRT).
    pub signal: i32,
    /// The signal's `si_code`: positive when the kernel raised it for a
    /// fault (1 = `SEGV_MAPERR`, 2 = `SEGV_ACCERR`, ...), zero or negative
    /// when a process sent it (-6 = `SI_TKILL`, as `abort` does).
    pub code: i32,
    /// The faulting address (`si_addr`) for a fault the kernel raised
    /// (positive [`code`](Self::code)); `None` for a signal a process sent.
    pub fault_address: Option<u64>,
    /// The vtable slot of the call in flight, if a call was.
    pub method: Option<u32>,
    /// The first bytes (at most 4 KiB) of that call's input.
    pub input: Vec<u8>,
    /// The length of that call's whole input (0 without a call).
    pub input_len: u64,
    /// The faulting thread's frames, innermost (the faulting instruction)
    /// first: `0x<address>`, followed by `<symbol>+0x<offset> in
    /// <module>+0x<offset>` when the worker could name it (exported symbols
    /// only: a plugin's internal functions show as module offsets). Empty if
    /// no backtrace could be taken.
    pub frames: Vec<String>,
    /// Whether the worker finished writing the report (`false`: it ended
    /// while naming frames, e.g. the dynamic loader's lock was held).
    pub complete: bool,
}

impl CrashReport {
    /// Whether [`input`](Self::input) holds the whole input.
    pub fn input_complete(&self) -> bool {
        self.input.len() as u64 == self.input_len
    }

    /// The command line that replays the crashed call with the `bulkhead`
    /// CLI: `bulkhead-cli call LIB [--plugin NAME] --method N --hex HEX`, for the
    /// library `lib` (and plugin `plugin`, for a library with several).
    /// `None` if no call was in flight or its input was longer than the
    /// copy (4 KiB).
    pub fn replay(&self, lib: &Path, plugin: Option<&str>) -> Option<String> {
        let method = self.method?;
        if !self.input_complete() {
            return None;
        }
        let mut cmd = format!("bulkhead-cli call {}", shell_quote(&lib.to_string_lossy()));
        if let Some(p) = plugin {
            cmd.push_str(" --plugin ");
            cmd.push_str(&shell_quote(p));
        }
        cmd.push_str(&format!(" --method {method} --hex "));
        if self.input.is_empty() {
            cmd.push_str("''");
        } else {
            for b in &self.input {
                cmd.push_str(&format!("{b:02x}"));
            }
        }
        Some(cmd)
    }
}

/// Quotes `s` for a POSIX shell when it holds anything but safe characters.
fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `signal 11 (SIGSEGV, code 1) at address 0x10 in method 27 (input 5 bytes)`.
impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = nix::sys::signal::Signal::try_from(self.signal)
            .map(|s| s.as_str())
            .unwrap_or("unknown");
        write!(f, "signal {} ({name}, code {})", self.signal, self.code)?;
        if let Some(a) = self.fault_address {
            write!(f, " at address {a:#x}")?;
        }
        match self.method {
            Some(m) => write!(f, " in method {m} (input {} bytes)", self.input_len),
            None => write!(f, " outside any call"),
        }
    }
}

/// A report being assembled from lines, with what the lines may still add.
struct Building {
    report: CrashReport,
    /// Frame addresses, and whether each is named yet.
    named: Vec<bool>,
    addresses: Vec<u64>,
}

/// The last crash report of one worker, shared between its stderr pipe
/// (which assembles it) and the code that reaps the worker.
#[derive(Clone, Default)]
pub(crate) struct CrashSlot(Arc<Mutex<Option<Building>>>);

impl CrashSlot {
    /// Takes one report line (already recognised by its marker); returns
    /// whether it was a valid one (invalid ones are ordinary output).
    pub(crate) fn feed(&self, line: &[u8]) -> bool {
        let Some(line) = Line::parse(line) else {
            return false;
        };
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match line {
            Line::Header {
                signal,
                code,
                addr,
                method,
                input_len,
            } => {
                *slot = Some(Building {
                    report: CrashReport {
                        signal,
                        code,
                        fault_address: (code > 0).then_some(addr),
                        method,
                        input: Vec::new(),
                        input_len,
                        frames: Vec::new(),
                        complete: false,
                    },
                    named: Vec::new(),
                    addresses: Vec::new(),
                })
            }
            // Lines of no report, or after its end, change nothing.
            _ if !slot.as_ref().is_some_and(|b| !b.report.complete) => {}
            Line::Input(bytes) => {
                let b = slot.as_mut().expect("checked above");
                let r = &mut b.report;
                let cap = (r.input_len.min(MAX_INPUT as u64) as usize).saturating_sub(r.input.len());
                if b.addresses.is_empty() {
                    r.input.extend_from_slice(&bytes[..bytes.len().min(cap)]);
                }
            }
            Line::Frame(ip) => {
                let b = slot.as_mut().expect("checked above");
                if b.addresses.len() < MAX_FRAMES && !b.named.iter().any(|&n| n) {
                    b.addresses.push(ip);
                    b.named.push(false);
                    b.report.frames.push(format!("{ip:#x}"));
                }
            }
            Line::Symbol { index, text } => {
                let b = slot.as_mut().expect("checked above");
                let i = index as usize;
                if i < b.addresses.len() && !b.named[i] {
                    b.named[i] = true;
                    b.report.frames[i] = format!("{:#x} {text}", b.addresses[i]);
                }
            }
            Line::End => slot.as_mut().expect("checked above").report.complete = true,
        }
        true
    }

    /// The last report, if the worker that ended with `exit` died of the
    /// signal it names.
    pub(crate) fn for_exit(&self, exit: &Exit) -> Option<Box<CrashReport>> {
        let Exit::Signal { signal, .. } = *exit else {
            return None;
        };
        let slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let b = slot.as_ref().filter(|b| b.report.signal == signal)?;
        Some(Box::new(b.report.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_shared::crash::{self as lines, MAX_LINE};

    fn sig(signal: i32) -> Exit {
        Exit::Signal {
            signal,
            core_dumped: false,
        }
    }

    fn feed_all(slot: &CrashSlot, build: impl Fn(&mut [u8; MAX_LINE]) -> usize) -> bool {
        let mut buf = [0u8; MAX_LINE];
        let n = build(&mut buf);
        slot.feed(&buf[..n - 1])
    }

    #[test]
    fn assembles_a_report_and_attaches_it_only_to_its_signal() {
        let slot = CrashSlot::default();
        let input: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        assert!(feed_all(&slot, |b| lines::encode_header(
            b,
            11,
            1,
            0x10,
            Some(27),
            5000
        )));
        for chunk in input[..MAX_INPUT].chunks(lines::INPUT_CHUNK) {
            assert!(feed_all(&slot, |b| lines::encode_input(b, chunk)));
        }
        // Input beyond the cap is ignored.
        assert!(feed_all(&slot, |b| lines::encode_input(b, &input[..10])));
        for ip in [0x1000, 0x2000] {
            assert!(feed_all(&slot, |b| lines::encode_frame(b, ip)));
        }
        assert!(feed_all(&slot, |b| {
            let mut s = lines::SymbolLine::new(b, 1);
            s.text(b"main+0x4 in app+0x2000");
            s.finish()
        }));
        assert!(!slot.for_exit(&sig(11)).unwrap().complete);
        assert!(feed_all(&slot, lines::encode_end));
        // After the end, only a new header changes anything.
        assert!(feed_all(&slot, |b| lines::encode_frame(b, 0x3000)));
        let r = slot.for_exit(&sig(11)).expect("report");
        assert_eq!(
            (r.signal, r.code, r.fault_address, r.method),
            (11, 1, Some(0x10), Some(27))
        );
        assert_eq!((r.input.as_slice(), r.input_len), (&input[..MAX_INPUT], 5000));
        assert_eq!(r.frames, ["0x1000", "0x2000 main+0x4 in app+0x2000"]);
        assert!(r.complete && !r.input_complete());
        assert_eq!(r.replay(Path::new("/x.so"), None), None);
        assert_eq!(slot.for_exit(&sig(6)), None);
        assert_eq!(slot.for_exit(&Exit::Code(0)), None);
        assert!(!slot.feed(b"\x1fbulkhead-crash ip=zz"));
    }

    #[test]
    fn replay_and_display() {
        let r = CrashReport {
            signal: 6,
            code: -6,
            fault_address: None,
            method: Some(6),
            input: vec![0xde, 0xad],
            input_len: 2,
            frames: vec![],
            complete: true,
        };
        assert_eq!(
            r.replay(Path::new("/a b/lib.so"), Some("P")).unwrap(),
            "bulkhead-cli call '/a b/lib.so' --plugin P --method 6 --hex dead"
        );
        assert_eq!(r.to_string(), "signal 6 (SIGABRT, code -6) in method 6 (input 2 bytes)");
        let r = CrashReport {
            signal: 11,
            code: 1,
            fault_address: Some(0x10),
            method: None,
            input: vec![],
            input_len: 0,
            frames: vec![],
            complete: true,
        };
        assert_eq!(
            r.to_string(),
            "signal 11 (SIGSEGV, code 1) at address 0x10 outside any call"
        );
        assert_eq!(r.replay(Path::new("/x.so"), None), None);
    }
}
