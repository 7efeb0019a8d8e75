//! Frames between `aurum getimage` and `aurum agent` on a remote golden client.
//!
//! The agent speaks on its stdin/stdout, which the system `ssh` carries. Each frame is a
//! little-endian u32 length, then a one-byte type, then the payload; the length counts type and
//! payload. The conversation has three rounds, each one a complete request from the server
//! followed by a stream of answers, so neither side ever writes while the other is blocked writing:
//!
//! 1. `Scan` -> `Entry`... `Done`: the tree, with stat data for the server's stat cache;
//! 2. `Hash` (files not in the stat cache, and a [`Known`] filter of the blobs the repository
//!    has) -> `Blob` and `Group`... (every chunk the filter does not know, sent as it is read,
//!    grouped and compressed by the agent as a local capture stores them), `Chunks`... `Done`;
//! 3. `Fetch` (chunks the repository still lacks: the filter's false positives) -> `Blob`...
//!    `Done`.
//!
//! In rounds 2 and 3 a file that no longer exists is answered with `Vanished` (version 2).
//! Rounds 2 and 3 may be repeated, when files vanish, until nothing more is missing. Version 3
//! sends content in round 2, so that a first capture reads and hashes each file once.

use std::io::{Read, Write};

use super::manifest::{decode_entry, encode_content, encode_entry, read_content, Chunk, Entry};
use super::pack::Codec;
use super::{Id, Reader, Writer};
use crate::error::{corrupt, Error, Result};

/// Protocol version; the agent announces it and the server refuses a mismatch.
pub const PROTOCOL_VERSION: u64 = 3;
/// Largest frame either side accepts (a blob is at most 1 MiB, a compressed group at most its
/// body of about [`crate::store::GROUP_TARGET`] plus one blob, a filter 4 MiB).
pub const MAX_FRAME: usize = 16 << 20;

/// A Bloom filter of blob ids the repository has, sent with `Hash` so that the agent sends
/// only chunks the repository (probably) lacks. Ids are BLAKE3 hashes, so their own bytes are
/// the filter's hash functions: four 64-bit words, each picking one bit. At ten bits per blob
/// about one lookup in a hundred says "known" wrongly; such a chunk is asked for in `Fetch`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Known {
    bits: Vec<u8>,
}

impl Known {
    /// Largest filter sent: past 3.3 million blobs the false positives grow instead.
    const MAX_BYTES: usize = 4 << 20;

    /// An empty filter sized for `n` ids.
    pub fn with_capacity(n: usize) -> Known {
        let bytes = if n == 0 {
            0
        } else {
            (n * 10).div_ceil(8).clamp(8, Self::MAX_BYTES)
        };
        Known {
            bits: vec![0; bytes],
        }
    }

    fn positions(&self, id: &Id) -> [usize; 4] {
        let m = self.bits.len() as u64 * 8;
        let mut words = id.0.chunks_exact(8).map(|w| {
            let word: [u8; 8] = w.try_into().expect("chunks of 8 bytes");
            (u64::from_le_bytes(word) % m) as usize
        });
        std::array::from_fn(|_| words.next().expect("32 bytes are 4 words"))
    }

    pub fn insert(&mut self, id: &Id) {
        if self.bits.is_empty() {
            return;
        }
        for p in self.positions(id) {
            if let Some(byte) = self.bits.get_mut(p / 8) {
                *byte |= 1 << (p % 8);
            }
        }
    }

    /// False for an id never inserted, except for about one in a hundred.
    pub fn contains(&self, id: &Id) -> bool {
        !self.bits.is_empty()
            && self.positions(id).into_iter().all(|p| {
                self.bits
                    .get(p / 8)
                    .is_some_and(|b| b & (1 << (p % 8)) != 0)
            })
    }
}

/// Stat data that decides whether the stat cache may vouch for a file's content.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatKey {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    /// `st_blocks * 512 < size`: the file may have holes.
    pub maybe_sparse: bool,
}

/// One frame.
#[derive(Debug, PartialEq)]
pub enum Msg {
    Hello {
        version: u64,
    },
    Scan {
        root: Vec<u8>,
        excludes: Vec<String>,
    },
    Entry {
        entry: Entry,
        stat: StatKey,
    },
    Warning(String),
    Hash {
        files: Vec<u64>,
        known: Known,
        /// The zstd level the repository stores at (`getimage --level`).
        level: u8,
    },
    Chunks {
        file: u64,
        chunks: Vec<Chunk>,
        extents: Option<Vec<(u64, u64)>>,
    },
    Fetch {
        wants: Vec<(u64, Vec<u32>)>,
    },
    /// The file asked for (a scan index) no longer exists.
    Vanished {
        file: u64,
    },
    Blob {
        id: Id,
        codec: Codec,
        raw_len: u32,
        payload: Vec<u8>,
    },
    /// A zstd-compressed group body (see [`super::pack::encode_group`]), stored as it is.
    Group {
        payload: Vec<u8>,
    },
    Done,
    Error(String),
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Msg::Hello { version } => {
                w.u8(b'H');
                w.var(*version);
            }
            Msg::Scan { root, excludes } => {
                w.u8(b'S');
                w.bytes(root);
                w.var(excludes.len() as u64);
                for x in excludes {
                    w.bytes(x.as_bytes());
                }
            }
            Msg::Entry { entry, stat } => {
                w.u8(b'E');
                encode_entry(&mut w, entry);
                w.var(stat.size);
                w.svar(stat.mtime_ns);
                w.svar(stat.ctime_ns);
                w.var(stat.ino);
                w.u8(stat.maybe_sparse as u8);
            }
            Msg::Warning(s) => {
                w.u8(b'W');
                w.bytes(s.as_bytes());
            }
            Msg::Hash {
                files,
                known,
                level,
            } => {
                w.u8(b'h');
                w.var(files.len() as u64);
                for f in files {
                    w.var(*f);
                }
                w.bytes(&known.bits);
                w.u8(*level);
            }
            Msg::Chunks {
                file,
                chunks,
                extents,
            } => {
                w.u8(b'C');
                w.var(*file);
                w.raw(&encode_content(chunks, extents.as_deref()));
            }
            Msg::Fetch { wants } => {
                w.u8(b'f');
                w.var(wants.len() as u64);
                for (file, idx) in wants {
                    w.var(*file);
                    w.var(idx.len() as u64);
                    for i in idx {
                        w.var(u64::from(*i));
                    }
                }
            }
            Msg::Vanished { file } => {
                w.u8(b'V');
                w.var(*file);
            }
            Msg::Blob {
                id,
                codec,
                raw_len,
                payload,
            } => {
                w.u8(b'B');
                w.id(id);
                w.u8(*codec as u8);
                w.var(u64::from(*raw_len));
                w.raw(payload);
            }
            Msg::Group { payload } => {
                w.u8(b'G');
                w.raw(payload);
            }
            Msg::Done => w.u8(b'.'),
            Msg::Error(s) => {
                w.u8(b'!');
                w.bytes(s.as_bytes());
            }
        }
        w.buf
    }

    fn decode(data: &[u8]) -> Result<Msg> {
        let mut r = Reader::new(data, "agent frame");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let msg = match r.u8()? {
            b'H' => Msg::Hello { version: r.var()? },
            b'S' => {
                let root = r.bytes()?.to_vec();
                let n = r.var()?;
                let mut excludes = Vec::new();
                for _ in 0..n {
                    excludes.push(text(r.bytes()?));
                }
                Msg::Scan { root, excludes }
            }
            b'E' => {
                let entry = decode_entry(&mut r)?;
                let stat = StatKey {
                    size: r.var()?,
                    mtime_ns: r.svar()?,
                    ctime_ns: r.svar()?,
                    ino: r.var()?,
                    maybe_sparse: r.u8()? != 0,
                };
                Msg::Entry { entry, stat }
            }
            b'W' => Msg::Warning(text(r.bytes()?)),
            b'h' => {
                let n = r.var()?;
                let mut files = Vec::new();
                for _ in 0..n {
                    files.push(r.var()?);
                }
                let bits = r.bytes()?.to_vec();
                if bits.len() > Known::MAX_BYTES {
                    return Err(corrupt("agent frame: filter too large"));
                }
                Msg::Hash {
                    files,
                    known: Known { bits },
                    level: r.u8()?,
                }
            }
            b'C' => {
                let file = r.var()?;
                let (chunks, extents) = read_content(&mut r)?;
                Msg::Chunks {
                    file,
                    chunks,
                    extents,
                }
            }
            b'f' => {
                let n = r.var()?;
                let mut wants = Vec::new();
                for _ in 0..n {
                    let file = r.var()?;
                    let k = r.var()?;
                    let mut idx = Vec::new();
                    for _ in 0..k {
                        idx.push(r.var()? as u32);
                    }
                    wants.push((file, idx));
                }
                Msg::Fetch { wants }
            }
            b'V' => Msg::Vanished { file: r.var()? },
            b'B' => {
                let id = r.id()?;
                let codec = Codec::from_u8(r.u8()?)?;
                let raw_len = r.var()? as u32;
                let payload = r.raw(r.remaining())?.to_vec();
                Msg::Blob {
                    id,
                    codec,
                    raw_len,
                    payload,
                }
            }
            b'G' => Msg::Group {
                payload: r.raw(r.remaining())?.to_vec(),
            },
            b'.' => Msg::Done,
            b'!' => Msg::Error(text(r.bytes()?)),
            other => return Err(corrupt(format!("unknown agent frame type {other}"))),
        };
        if !r.at_end() {
            return Err(corrupt("agent frame has trailing bytes"));
        }
        Ok(msg)
    }
}

/// Writes one frame.
pub fn send(w: &mut impl Write, msg: &Msg) -> Result<()> {
    let body = msg.encode();
    w.write_all(&(body.len() as u32).to_le_bytes())?;
    w.write_all(&body)?;
    Ok(())
}

/// Reads one frame; `None` at a clean end of stream.
pub fn recv(r: &mut impl Read) -> Result<Option<Msg>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::Os(e)),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(corrupt(format!(
            "agent sent a frame of {len} bytes; is the same aurum version installed on both ends?"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Msg::decode(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::manifest::Kind;

    proptest::proptest! {
        /// What the other end sends is refused or read, never a panic.
        #[test]
        fn any_bytes_decode_or_fail(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = Msg::decode(&data);
            let _ = recv(&mut &data[..]);
            let framed = [&(data.len() as u32).to_le_bytes()[..], &data].concat();
            let _ = recv(&mut &framed[..]);
        }
    }

    #[test]
    fn frames_round_trip() {
        let entry = Entry {
            path: b"etc/\xff".to_vec(),
            kind: Kind::Fifo,
            mode: 0o644,
            uid: 1,
            gid: 2,
            mtime: -5,
            mtime_nsec: 7,
            xattrs: vec![(b"user.a".to_vec(), b"b".to_vec())],
        };
        let msgs = vec![
            Msg::Hello { version: 1 },
            Msg::Scan {
                root: b"/".to_vec(),
                excludes: vec!["/proc/*".into()],
            },
            Msg::Entry {
                entry,
                stat: StatKey {
                    size: 3,
                    mtime_ns: -1,
                    ctime_ns: 2,
                    ino: 9,
                    maybe_sparse: true,
                },
            },
            Msg::Hash {
                files: vec![1, 2],
                known: {
                    let mut k = Known::with_capacity(3);
                    k.insert(&Id::of(b"x"));
                    k
                },
                level: 19,
            },
            Msg::Group {
                payload: b"zstd".to_vec(),
            },
            Msg::Chunks {
                file: 1,
                chunks: vec![Chunk {
                    id: Id::of(b"x"),
                    len: 1,
                }],
                extents: Some(vec![(0, 1)]),
            },
            Msg::Fetch {
                wants: vec![(1, vec![0, 3])],
            },
            Msg::Vanished { file: 7 },
            Msg::Blob {
                id: Id::of(b"x"),
                codec: Codec::Raw,
                raw_len: 1,
                payload: b"x".to_vec(),
            },
            Msg::Done,
            Msg::Error("boom".into()),
            Msg::Warning("hm".into()),
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            send(&mut buf, m).unwrap();
        }
        let mut rd = &buf[..];
        for m in &msgs {
            assert_eq!(&recv(&mut rd).unwrap().unwrap(), m);
        }
        assert!(recv(&mut rd).unwrap().is_none());
    }

    #[test]
    fn known_filter_finds_what_it_holds() {
        let ids: Vec<Id> = (0u32..1000).map(|i| Id::of(&i.to_le_bytes())).collect();
        let mut k = Known::with_capacity(ids.len());
        for id in &ids {
            k.insert(id);
        }
        assert!(ids.iter().all(|id| k.contains(id)));
        let wrong = (1000u32..11000)
            .filter(|i| k.contains(&Id::of(&i.to_le_bytes())))
            .count();
        assert!(wrong < 300, "{wrong} false positives in 10000");
        assert!(!Known::with_capacity(0).contains(&ids[0]));
    }
}
