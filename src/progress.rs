//! Progress reporting, as a trait the library calls and the binary implements.
//!
//! The library never draws anything: it says which phase it is in and how far along it is. The
//! binary shows indicatif bars on a terminal and nothing otherwise (or with `--no-progress`).

/// Receives progress from long operations. Implementations must be cheap: `advance` is called
/// per file or per blob, from several threads.
pub trait Progress: Sync {
    /// A new phase begins; `total` is in the unit of `advance` when known.
    fn phase(&self, name: &str, total: Option<u64>, bytes: bool);
    /// `n` more units done in the current phase.
    fn advance(&self, n: u64);
    /// The current phase is over.
    fn finish(&self);
    /// A short note beside the current phase (e.g. that the server stalled and is being
    /// retried); an empty note clears it.
    fn note(&self, _note: &str) {}
}

/// The log target of notes the binary prints as `aurum: NOTE` (at warning level, so that they
/// show by default and --quiet hides them): that a command waits for a lock, that a
/// repository was upgraded. The library prints nothing itself.
pub const NOTICE: &str = "aurum::notice";

/// Progress that goes nowhere.
pub struct Quiet;

impl Progress for Quiet {
    fn phase(&self, _: &str, _: Option<u64>, _: bool) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}
