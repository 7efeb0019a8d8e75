//! `aurum agent`: the golden client's end of a remote capture.
//!
//! It reads requests on stdin and answers on stdout (see [`crate::format::wire`]), using the very
//! scanner and chunker a local capture uses, so a remote capture stores exactly what a local one
//! would. Nothing but frames may go to stdout; logs go to stderr.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use super::excludes::Excludes;
use super::scan::Scanned;
use super::{BlobSink, HashOnly, LocalSource, Source};
use crate::error::{invalid, Result};
use crate::format::pack::Codec;
use crate::format::wire::{self, Msg, PROTOCOL_VERSION};
use crate::format::Id;
use crate::progress::Quiet;

/// Sends every blob it is given, as a frame.
struct WireSink<W: Write + Send>(Mutex<W>);

impl<W: Write + Send> BlobSink for WireSink<W> {
    fn claim(&self, _: &Id) -> Result<bool> {
        Ok(true)
    }
    fn put(&self, id: &Id, codec: Codec, raw_len: u32, payload: &[u8]) -> Result<()> {
        let msg = Msg::Blob {
            id: *id,
            codec,
            raw_len,
            payload: payload.to_vec(),
        };
        wire::send(&mut *self.0.lock().expect("wire lock"), &msg)
    }
    fn put_grouped(&self, id: &Id, raw: &[u8]) -> Result<()> {
        // Compressed for the wire; the server groups it after checking it.
        let (codec, payload) = crate::store::compress(raw);
        self.put(id, codec, raw.len() as u32, &payload)
    }
}

/// Serves one capture over `input` / `output`.
pub fn serve(input: impl Read, output: impl Write + Send) -> Result<()> {
    let mut input = BufReader::new(input);
    let out = Mutex::new(BufWriter::new(output));
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
    while let Some(msg) = wire::recv(input)? {
        match msg {
            Msg::Scan { root, excludes } => {
                let root = PathBuf::from(std::ffi::OsString::from(
                    <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&root),
                ));
                let mut source = LocalSource::new(&root, Excludes::new(&excludes)?);
                let (scanned, warnings) = source.scan(&Quiet)?;
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
            Msg::Hash { files } => {
                let (source, scanned) =
                    state.as_mut().ok_or_else(|| invalid("hash before scan"))?;
                let files: Vec<usize> = files.into_iter().map(|f| f as usize).collect();
                if files.iter().any(|&f| f >= scanned.len()) {
                    return Err(invalid("hash request names an entry that was not scanned"));
                }
                let contents = source.hash(&files, scanned, &HashOnly, &Quiet)?;
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
                drop(sink);
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
