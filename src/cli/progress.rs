//! indicatif bars for the library's [`Progress`] trait, drawn only on a terminal.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use aurum::progress::{Progress, Quiet};
use indicatif::{ProgressBar, ProgressStyle};

/// Progress bars on stderr.
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn phase(&self, name: &str, total: Option<u64>, bytes: bool) {
        let bar = match total {
            Some(t) => {
                let tmpl = if bytes {
                    "{prefix:>18} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}"
                } else {
                    "{prefix:>18} [{bar:30}] {pos}/{len} eta {eta} {msg}"
                };
                ProgressBar::new(t).with_style(
                    ProgressStyle::with_template(tmpl)
                        .expect("valid template")
                        .progress_chars("=> "),
                )
            }
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{prefix:>18} {spinner} {pos} entries")
                    .expect("valid template"),
            ),
        };
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        if let Some(old) = self.bar.lock().expect("bar lock").replace(bar) {
            old.finish_and_clear();
        }
    }

    fn advance(&self, n: u64) {
        if let Some(b) = &*self.bar.lock().expect("bar lock") {
            b.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(b) = self.bar.lock().expect("bar lock").take() {
            b.finish_and_clear();
        }
    }

    fn note(&self, note: &str) {
        if let Some(b) = &*self.bar.lock().expect("bar lock") {
            b.set_message(note.to_string());
        }
    }
}

/// Bars when stderr is a terminal and not disabled, silence otherwise.
pub fn for_terminal(disabled: bool) -> Box<dyn Progress> {
    if !disabled && std::io::stderr().is_terminal() {
        Box::new(Bars {
            bar: Mutex::new(None),
        })
    } else {
        Box::new(Quiet)
    }
}
