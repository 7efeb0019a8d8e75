//! `aurum agent`: the golden client's end of a remote capture.
//!
//! It reads requests on stdin and answers on stdout (see [`crate::format::wire`]), using the very
//! scanner and chunker a local capture uses, so a remote capture stores exactly what a local one
//! would. Nothing but frames may go to stdout; logs go to stderr.
//!
//! A file is read once when the repository lacks its content: while hashing, the agent sends
//! every chunk the server's [`Known`] filter does not hold, grouped and compressed the way a
//! local capture stores them, so that the server only checks and appends. The compression
//! thus runs on the golden client, and the server never compresses the same bytes again.

use std::collections::HashSet;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use super::scan::Scanned;
use super::{BlobSink, LocalSource, Source};
use crate::error::{invalid, Result};
use crate::excludes::Excludes;
use crate::format::pack::Codec;
use crate::format::wire::{self, Known, Msg, PROTOCOL_VERSION};
use crate::format::Id;
use crate::progress::Quiet;

/// Frames, both ways, go through buffers this large: fewer system calls on a fast link.
pub const PIPE_BUFFER: usize = 1 << 20;

fn send_blob(
    out: &mut impl Write,
    id: &Id,
    codec: Codec,
    raw_len: u32,
    payload: &[u8],
) -> Result<()> {
    let msg = Msg::Blob {
        id: *id,
        codec,
        raw_len,
        payload: payload.to_vec(),
    };
    wire::send(out, &msg)
}

/// The sink of the hashing round: claims each chunk the server's filter does not know (once
/// per capture) and sends it, raw or in groups as a local capture would store it.
struct SendingSink<'a, W: Write + Send> {
    out: Mutex<W>,
    known: &'a Known,
    sent: &'a Mutex<HashSet<Id>>,
    /// The group being filled by blobs handed over one at a time (a big file's).
    open: Mutex<Vec<(Id, Vec<u8>)>>,
}

impl<W: Write + Send> SendingSink<'_, W> {
    fn send_grouped(&self, g: crate::store::GroupedBlobs) -> Result<()> {
        let mut out = self.out.lock().expect("wire lock");
        for (id, data) in g.raw {
            send_blob(&mut *out, &id, Codec::Raw, data.len() as u32, &data)?;
        }
        for group in g.groups {
            wire::send(
                &mut *out,
                &Msg::Group {
                    payload: group.payload().to_vec(),
                },
            )?;
        }
        *self.open.lock().expect("group lock") = g.open;
        Ok(())
    }

    /// Sends the group left open.
    fn finish(&self) -> Result<()> {
        let open = std::mem::take(&mut *self.open.lock().expect("group lock"));
        if open.is_empty() {
            return Ok(());
        }
        let group = crate::store::PreparedGroup::new(open)?;
        let mut out = self.out.lock().expect("wire lock");
        wire::send(
            &mut *out,
            &Msg::Group {
                payload: group.payload().to_vec(),
            },
        )
    }
}

impl<W: Write + Send> BlobSink for SendingSink<'_, W> {
    fn claim(&self, id: &Id) -> Result<bool> {
        Ok(!self.known.contains(id) && self.sent.lock().expect("sent lock").insert(*id))
    }
    fn put(&self, id: &Id, codec: Codec, raw_len: u32, payload: &[u8]) -> Result<()> {
        send_blob(
            &mut *self.out.lock().expect("wire lock"),
            id,
            codec,
            raw_len,
            payload,
        )
    }
    fn put_grouped(&self, id: &Id, raw: &[u8]) -> Result<()> {
        self.put_many(vec![(*id, raw.to_vec())])
    }
    fn put_many(&self, blobs: Vec<(Id, Vec<u8>)>) -> Result<()> {
        let open = std::mem::take(&mut *self.open.lock().expect("group lock"));
        self.send_grouped(crate::store::group_blobs(blobs, open)?)
    }
}

/// Sends every blob it is given, as a frame (the fetch round: chunks the filter wrongly
/// said the repository has, a handful).
struct WireSink<W: Write + Send>(Mutex<W>);

impl<W: Write + Send> BlobSink for WireSink<W> {
    fn claim(&self, _: &Id) -> Result<bool> {
        Ok(true)
    }
    fn put(&self, id: &Id, codec: Codec, raw_len: u32, payload: &[u8]) -> Result<()> {
        send_blob(
            &mut *self.0.lock().expect("wire lock"),
            id,
            codec,
            raw_len,
            payload,
        )
    }
    fn put_grouped(&self, id: &Id, raw: &[u8]) -> Result<()> {
        // Compressed for the wire; the server groups it after checking it.
        let (codec, payload) = crate::store::compress(raw);
        self.put(id, codec, raw.len() as u32, &payload)
    }
}

/// Serves one capture over `input` / `output`.
pub fn serve(input: impl Read, output: impl Write + Send) -> Result<()> {
    let mut input = BufReader::with_capacity(PIPE_BUFFER, input);
    let out = Mutex::new(BufWriter::with_capacity(PIPE_BUFFER, output));
    let result = converse(&mut input, &out);
    let mut w = out.lock().expect("wire lock");
    if let Err(e) = &result {
        let _ = wire::send(&mut *w, &Msg::Error(format!("{e:#}")));
    }
    w.flush()?;
    result
}

fn converse<W: Write + Send>(input: &mut impl Read, out: &Mutex<W>) -> Result<()> {
    let send = |m: &Msg| wire::send(&mut *out.lock().expect("wire lock"), m);
    let flush = || -> Result<()> { Ok(out.lock().expect("wire lock").flush()?) };
    send(&Msg::Hello {
        version: PROTOCOL_VERSION,
    })?;
    flush()?;
    let mut state: Option<(LocalSource, Vec<Scanned>)> = None;
    // Chunks sent in this capture: each goes once, whichever file and round finds it.
    let sent = Mutex::new(HashSet::new());
    while let Some(msg) = wire::recv(input)? {
        match msg {
            Msg::Scan { root, excludes } => {
                let root = PathBuf::from(std::ffi::OsString::from(
                    <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&root),
                ));
                let mut source = LocalSource::new(&root, Excludes::new(&excludes)?);
                let mut scanned = Vec::new();
                let warnings = source.scan(&Quiet, None, &mut |s| {
                    scanned.push(s);
                    Ok(())
                })?;
                for w in warnings {
                    send(&Msg::Warning(w))?;
                }
                for s in &scanned {
                    send(&Msg::Entry {
                        entry: s.entry.clone(),
                        stat: s.stat,
                    })?;
                }
                send(&Msg::Done)?;
                state = Some((source, scanned));
            }
            Msg::Hash {
                files,
                known,
                level,
            } => {
                // Before this process compresses anything: each thread's compressor takes
                // the level when it is first used.
                crate::store::set_level(i32::from(level));
                let (source, scanned) =
                    state.as_mut().ok_or_else(|| invalid("hash before scan"))?;
                let files: Vec<usize> = files.into_iter().map(|f| f as usize).collect();
                if files.iter().any(|&f| f >= scanned.len()) {
                    return Err(invalid("hash request names an entry that was not scanned"));
                }
                let mut guard = out.lock().expect("wire lock");
                let sink = SendingSink {
                    out: Mutex::new(&mut *guard),
                    known: &known,
                    sent: &sent,
                    open: Mutex::new(Vec::new()),
                };
                let contents = source.hash(&files, scanned, &sink, &Quiet)?;
                sink.finish()?;
                drop(guard);
                for (f, c) in files.iter().zip(contents) {
                    let file = *f as u64;
                    send(&match c {
                        Some(c) => Msg::Chunks {
                            file,
                            chunks: c.chunks,
                            extents: c.extents,
                        },
                        None => Msg::Vanished { file },
                    })?;
                }
                send(&Msg::Done)?;
            }
            Msg::Fetch { wants } => {
                let (source, scanned) =
                    state.as_mut().ok_or_else(|| invalid("fetch before scan"))?;
                let wants: Vec<(usize, Vec<u32>)> =
                    wants.into_iter().map(|(f, n)| (f as usize, n)).collect();
                if wants.iter().any(|(f, _)| *f >= scanned.len()) {
                    return Err(invalid("fetch request names an entry that was not scanned"));
                }
                let mut guard = out.lock().expect("wire lock");
                let sink = WireSink(Mutex::new(&mut *guard));
                let vanished = source.fetch(&wants, scanned, &sink, &Quiet)?;
                drop(guard);
                for file in vanished {
                    send(&Msg::Vanished { file: file as u64 })?;
                }
                send(&Msg::Done)?;
            }
            other => return Err(invalid(format!("unexpected request {other:?}"))),
        }
        flush()?;
    }
    Ok(())
}
