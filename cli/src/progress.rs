//! Progress lines on stderr for long work (sealing, opening, digesting): at most one a
//! second, rewritten in place on a terminal, one per line otherwise.

use std::io::{self, IsTerminal};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Inputs at least this large get progress lines; those of unknown size always do.
const PROGRESS_THRESHOLD: u64 = 64 << 20;

/// Prints progress on stderr at most once a second, for large inputs only.
pub(crate) struct Progress {
    total: Option<u64>,
    verb: &'static str,
    last: Mutex<Instant>,
    terminal: bool,
}

impl Progress {
    pub(crate) fn new(verb: &'static str, total: Option<u64>) -> Option<Self> {
        let large = total.is_none_or(|t| t >= PROGRESS_THRESHOLD);
        large.then(|| Progress {
            total,
            verb,
            last: Mutex::new(Instant::now()),
            terminal: io::stderr().is_terminal(),
        })
    }

    pub(crate) fn update(&self, done: u64) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if last.elapsed() < Duration::from_secs(1) {
            return;
        }
        *last = Instant::now();
        let mib = done >> 20;
        let line = match self.total {
            Some(total) if total > 0 => {
                format!(
                    "{} {mib} MiB of {} MiB ({}%)",
                    self.verb,
                    total >> 20,
                    done.saturating_mul(100) / total
                )
            }
            _ => format!("{} {mib} MiB", self.verb),
        };
        if self.terminal {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    }

    pub(crate) fn finish(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}
