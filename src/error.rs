//! Library errors.
//!
//! Every error says what went wrong and, where there is one, what the administrator can do next.
//! The binary prints them with anyhow's `{:#}` and maps each kind to a fixed exit code
//! (see [`Error::exit_code`]), which the book documents on its errors page.

use std::path::{Path, PathBuf};

/// The one error type of the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system call failed on a named path.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file-system or pipe error with no single path to name.
    #[error(transparent)]
    Os(#[from] std::io::Error),
    /// Input the administrator gave us is wrong; the message says how to fix it.
    #[error("{0}")]
    Invalid(String),
    /// A revision, image, tag or path does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Of several servers, those that answered lack a file and the others never answered:
    /// the file may be on those. Never to be taken as absent where the absence changes what a
    /// node holds (an override the node follows would be composed out, deleting its files).
    #[error("{message}")]
    PartialNotFound {
        message: String,
        /// The servers that did not answer.
        unreachable: Vec<String>,
    },
    /// Stored data does not match its hash or its format.
    #[error("{0}")]
    Corrupt(String),
    /// The golden client's agent or ssh failed.
    #[error("{0}")]
    Remote(String),
    /// An external tool (sgdisk, mkfs, mount...) or a hook failed; the message holds its output.
    #[error("{0}")]
    Tool(String),
    /// A node cannot take an update as it stands: too little space, a quota, a read-only
    /// filesystem or an immutable file. The message names the place and the fix, and says
    /// what state the node was left in (unchanged, or returned to its revision).
    #[error("{0}")]
    Unwritable(String),
    /// An HTTP server did not answer, after every retry.
    #[error(
        "{server}: no usable answer for {object} after {attempts} tries over {:.0} s (last: {last}); check that the server (`aurum serve`, or the web server) is up and reachable, and its log when it answers an error (HTTP 5xx), or give it longer with --idle-timeout / --connect-timeout / --http-tries",
        waited.as_secs_f64()
    )]
    Unanswered {
        server: String,
        object: String,
        attempts: u32,
        waited: std::time::Duration,
        last: String,
    },
    /// A file a server publishes (packs/list, a pack index) disagrees with the server's store.
    #[error("{file} is inconsistent with the server's repository: {problem}; run `aurum verify --repair` on the server to rebuild its published files")]
    Inconsistent { file: String, problem: String },
    /// A revision a node, a pull or `verify` refuses because its signatures do not make it
    /// trusted (unsigned, signed by an untrusted or revoked key, altered after signing), or
    /// because it is older than what the node runs (a rollback or freeze attack). The message
    /// names the revision and the key, and what to do.
    #[error("{0}")]
    Untrusted(String),
    /// The SQLite catalog refused an operation.
    #[error("catalog: {0}")]
    Catalog(#[from] rusqlite::Error),
}

/// Shorthand used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Exit code of the binary for this error: 1 for failures, 2 for bad input or missing
    /// things, 3 for damaged data.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Invalid(_) | Error::NotFound(_) => 2,
            Error::Corrupt(_) | Error::Inconsistent { .. } | Error::Untrusted(_) => 3,
            _ => 1,
        }
    }
}

impl Error {
    /// The same error (same kind, same exit code) with `note` after its message: what happened
    /// as a consequence, or what to do.
    pub fn with_note(self, note: &str) -> Error {
        match self {
            Error::Io { path, source } => Error::Io {
                path,
                source: Noted::wrap(source, note),
            },
            Error::Os(source) => Error::Os(Noted::wrap(source, note)),
            Error::Invalid(m) => Error::Invalid(m + note),
            Error::NotFound(m) => Error::NotFound(m + note),
            Error::PartialNotFound {
                message,
                unreachable,
            } => Error::PartialNotFound {
                message: message + note,
                unreachable,
            },
            Error::Corrupt(m) => Error::Corrupt(m + note),
            Error::Remote(m) => Error::Remote(m + note),
            Error::Tool(m) => Error::Tool(m + note),
            Error::Unwritable(m) => Error::Unwritable(m + note),
            Error::Untrusted(m) => Error::Untrusted(m + note),
            Error::Inconsistent { file, problem } => Error::Inconsistent {
                file,
                problem: problem + note,
            },
            e @ Error::Unanswered { .. } => Error::Tool(format!("{e}{note}")),
            Error::Catalog(e) => Error::Tool(format!("catalog: {e}{note}")),
        }
    }
}

impl Error {
    /// The errno of a failed system call, also through a note added by [`Error::with_note`].
    pub fn raw_os_error(&self) -> Option<i32> {
        let io = match self {
            Error::Io { source, .. } | Error::Os(source) => source,
            _ => return None,
        };
        io.raw_os_error().or_else(|| {
            io.get_ref()
                .and_then(|e| e.downcast_ref::<Noted>())
                .and_then(|n| n.source.raw_os_error())
        })
    }
}

/// An `io::Error` with a note after its message, keeping the original (and its errno).
#[derive(Debug)]
struct Noted {
    source: std::io::Error,
    note: String,
}

impl Noted {
    fn wrap(source: std::io::Error, note: &str) -> std::io::Error {
        std::io::Error::new(
            source.kind(),
            Noted {
                source,
                note: note.to_string(),
            },
        )
    }
}

impl std::fmt::Display for Noted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.source, self.note)
    }
}

impl std::error::Error for Noted {}

/// Adds the path to an `io::Error`.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        })
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|errno| Error::Io {
            path: path.as_ref().to_path_buf(),
            source: std::io::Error::from(errno),
        })
    }
}

/// `Error::Invalid` from anything printable.
pub fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// `Error::Corrupt` from anything printable.
pub fn corrupt(msg: impl Into<String>) -> Error {
    Error::Corrupt(msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_keeps_the_errno_and_the_message() {
        let e = Error::Io {
            path: "/n/usr/lib/big".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        }
        .with_note(" (while staging)");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        let msg = e.to_string();
        assert!(msg.starts_with("/n/usr/lib/big: No space left"), "{msg}");
        assert!(msg.ends_with(" (while staging)"), "{msg}");
        let os = Error::Os(std::io::Error::from_raw_os_error(libc::EROFS)).with_note("!");
        assert_eq!(os.raw_os_error(), Some(libc::EROFS));
    }
}
