//! Binary deltas on the wire and in the repository's cache: the `POST /api/v1/deltas` request
//! and answer, the delta frame itself, and the names of cached deltas.
//!
//! A delta is one zstd frame compressed with its *base* (the old blobs, concatenated) as the
//! reference prefix, what `zstd --patch-from=BASE` makes, with the smallest window that holds
//! base and target, at most 2^[`WINDOW_LOG`] bytes (a reader accepts any window up to that).
//! Which blobs make the base, and when a delta pays, is `delta`'s business; this module only
//! says how the bytes look.
//!
//! Request: repeated `target id (32) | n (u8) | n base ids (32 each)`, at most [`MAX_BATCH`]
//! records. Answer: repeated `status (u8: 0 none, 1 frame) | length (u32 LE) | frame`, one
//! record per request record, in order. The version is the `v1` of the URL.

use std::io::{Read, Write};

use super::Id;
use crate::error::{corrupt, invalid, Result};

/// Version of the delta request and answer: the `v1` in `/api/v1/deltas`.
pub const VERSION: u32 = 1;
/// zstd window: 2^23 = 8 MiB holds the largest base plus the largest target.
pub const WINDOW_LOG: u32 = 23;
/// Largest rebuilt blob whose room [`decode`] reserves from the frame's own size: a delta's
/// window holds its base and target.
const MAX_RESERVE: u64 = 1 << WINDOW_LOG;
/// Most records in one request.
pub const MAX_BATCH: usize = 512;
/// Most base blobs one record can name (its count is one byte).
pub const MAX_BASE_IDS: usize = u8::MAX as usize;
/// Largest request body: [`MAX_BATCH`] records of the largest size.
pub const MAX_REQUEST: usize = MAX_BATCH * (33 + MAX_BASE_IDS * 32);
/// Largest frame a reader accepts in one answer record.
pub const MAX_FRAME: u32 = 64 << 20;

/// One delta a node asks for: `target` rebuilt from the blobs of `base`, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub target: Id,
    pub base: Vec<Id>,
}

/// Compresses `target` against `base`: one zstd frame with `base` as its reference prefix.
pub fn encode(base: &[u8], target: &[u8], level: i32) -> Result<Vec<u8>> {
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), level, base)?;
    enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(window_log(
        base.len() + target.len(),
    )))?;
    enc.set_pledged_src_size(Some(target.len() as u64))?;
    enc.write_all(target)?;
    Ok(enc.finish()?)
}

/// The smallest window that holds base and target (at most [`WINDOW_LOG`]). A window no
/// larger than the pair keeps the encoder's tables small: a fixed 8 MiB window made every
/// small file's delta set up (and clear) tens of megabytes of match tables, which is what
/// made precomputing 20,000 small deltas take minutes (issue #14). The decoder accepts any
/// window up to [`WINDOW_LOG`], so deltas made either way decode alike.
fn window_log(pair: usize) -> u32 {
    let mut log = 10; // zstd's smallest window
    while log < WINDOW_LOG && (1usize << log) < pair {
        log += 1;
    }
    log
}

/// Rebuilds a blob from its base and delta, and checks it is `target`.
pub fn decode(base: &[u8], delta: &[u8], target: &Id) -> Result<Vec<u8>> {
    let wrong = || {
        corrupt(format!(
            "the delta for blob {} does not rebuild it; it was not used",
            target.short()
        ))
    };
    let mut dec = zstd::stream::read::Decoder::with_ref_prefix(delta, base).map_err(|_| wrong())?;
    dec.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(WINDOW_LOG))
        .map_err(|_| wrong())?;
    // Sized from the frame's content size (the encoder pledges it): grown by doubling, a
    // rebuilt blob held up to twice its length, and an update rebuilding a 1 GiB file's
    // changed chunks held 104 MiB for 64 MiB of blobs (issue #14). At most [`MAX_RESERVE`]
    // is reserved that way, more than any blob or manifest a delta rebuilds (a frame that
    // claims more grows as it is read, as before).
    let size = zstd::zstd_safe::get_frame_content_size(delta)
        .ok()
        .flatten()
        .filter(|&n| n <= MAX_RESERVE);
    let mut out = Vec::with_capacity(size.unwrap_or(0) as usize);
    dec.take(u64::from(u32::MAX))
        .read_to_end(&mut out)
        .map_err(|_| wrong())?;
    if Id::of(&out) != *target {
        return Err(wrong());
    }
    Ok(out)
}

/// The request body for `wants`. A record names at most [`MAX_BASE_IDS`] base blobs (the
/// chooser never makes more: see `delta::base_for`); one with more is refused rather than
/// sent with a count that wrapped.
pub fn encode_request(wants: &[Want]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(wants.len() * 66);
    for w in wants {
        let n = u8::try_from(w.base.len()).map_err(|_| {
            invalid(format!(
                "a delta of blob {} names {} base blobs; at most {MAX_BASE_IDS} fit a request",
                w.target.short(),
                w.base.len()
            ))
        })?;
        out.extend_from_slice(&w.target.0);
        out.push(n);
        for b in &w.base {
            out.extend_from_slice(&b.0);
        }
    }
    Ok(out)
}

/// Parses a request body (any bytes: a malformed or oversized one is an error).
pub fn decode_request(data: &[u8]) -> Result<Vec<Want>> {
    let bad = || invalid("malformed delta request");
    let mut r = super::Reader::new(data, "delta request");
    let mut out = Vec::new();
    while !r.at_end() {
        if out.len() >= MAX_BATCH {
            return Err(bad());
        }
        let target = r.id().map_err(|_| bad())?;
        let n = r.u8().map_err(|_| bad())?;
        let base = (0..n)
            .map(|_| r.id().map_err(|_| bad()))
            .collect::<Result<_>>()?;
        out.push(Want { target, base });
    }
    Ok(out)
}

/// Appends one record of an answer: the frame, or `None` for "no delta pays". Frames over
/// [`MAX_FRAME`] are never made (a base and a target are a few MiB at most).
pub fn encode_answer(out: &mut Vec<u8>, delta: Option<&[u8]>) {
    out.push(u8::from(delta.is_some()));
    let d = delta.unwrap_or(&[]);
    out.extend_from_slice(&(d.len() as u32).to_le_bytes());
    out.extend_from_slice(d);
}

/// Reads the next record of an answer; `None` at its end.
pub fn read_answer(r: &mut impl Read) -> Result<Option<Option<Vec<u8>>>> {
    let mut status = [0u8; 1];
    loop {
        match r.read(&mut status) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let [status] = status;
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|_| corrupt("the server's delta answer is cut short"))?;
    let len = u32::from_le_bytes(len);
    if status == 0 {
        return Ok(Some(None));
    }
    if status != 1 || len > MAX_FRAME {
        return Err(corrupt("the server's delta answer is malformed"));
    }
    let mut d = vec![0u8; len as usize];
    r.read_exact(&mut d)
        .map_err(|_| corrupt("the server's delta answer is cut short"))?;
    Ok(Some(Some(d)))
}

/// The cache file of a pair, without its extension, relative to `deltas/`:
/// `XX/<target hex>-<key>`, where `<key>` is the first 32 hex digits of the blake3 hash of the
/// base ids and XX the target's first two hex digits. `.zd` holds the frame, `.none` records
/// that no delta pays.
pub fn cache_stem(w: &Want) -> String {
    let mut key = blake3::Hasher::new();
    for b in &w.base {
        key.update(&b.0);
    }
    let key = key.finalize().to_hex();
    let t = w.target.hex();
    let (sub, key) = (
        t.get(..2).unwrap_or_default(),
        key.get(..32).unwrap_or_default(),
    );
    format!("{sub}/{t}-{key}")
}

/// The target of a cache file, from its name (`None` for a name the cache never writes).
pub fn cache_target(file_name: &str) -> Option<Id> {
    file_name.get(..64).and_then(Id::from_hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn want() -> impl Strategy<Value = Want> {
        (
            any::<[u8; 32]>(),
            prop::collection::vec(any::<[u8; 32]>(), 0..=MAX_BASE_IDS),
        )
            .prop_map(|(t, b)| Want {
                target: Id(t),
                base: b.into_iter().map(Id).collect(),
            })
    }

    proptest! {
        #[test]
        fn requests_round_trip(wants in prop::collection::vec(want(), 0..8)) {
            let body = encode_request(&wants).unwrap();
            prop_assert_eq!(decode_request(&body).unwrap(), wants);
            // Any cut short is refused, never misread.
            if !body.is_empty() {
                prop_assert!(decode_request(&body[..body.len() - 1]).is_err());
            }
        }

        #[test]
        fn any_request_bytes_decode_or_fail(body in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_request(&body);
        }

        #[test]
        fn answers_round_trip(frames in prop::collection::vec(
            prop::option::of(prop::collection::vec(any::<u8>(), 0..100)), 0..8)) {
            let mut out = Vec::new();
            for f in &frames {
                encode_answer(&mut out, f.as_deref());
            }
            let mut r = &out[..];
            for f in &frames {
                prop_assert_eq!(read_answer(&mut r).unwrap(), Some(f.clone()));
            }
            prop_assert!(read_answer(&mut r).unwrap().is_none());
        }

        #[test]
        fn any_answer_bytes_read_or_fail(body in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut r = &body[..];
            while let Ok(Some(_)) = read_answer(&mut r) {}
        }
    }

    #[test]
    fn requests_have_limits() {
        let big = Want {
            target: Id::of(b"t"),
            base: vec![Id::of(b"b"); MAX_BASE_IDS + 1],
        };
        assert!(encode_request(&[big]).is_err());
        let one = encode_request(&[Want {
            target: Id::of(b"t"),
            base: Vec::new(),
        }])
        .unwrap();
        assert_eq!(one.len(), 33);
        assert!(decode_request(&one.repeat(MAX_BATCH)).is_ok());
        assert!(decode_request(&one.repeat(MAX_BATCH + 1)).is_err());
    }

    #[test]
    fn answers_refuse_bad_records() {
        assert!(read_answer(&mut &[2u8, 0, 0, 0, 0][..]).is_err());
        let huge = [&[1u8][..], &(MAX_FRAME + 1).to_le_bytes()].concat();
        assert!(read_answer(&mut &huge[..]).is_err());
        assert!(read_answer(&mut &[1u8, 5, 0, 0, 0, 1][..]).is_err());
        assert!(read_answer(&mut &[0u8, 0, 0][..]).is_err());
    }

    #[test]
    fn a_delta_rebuilds_its_target_and_nothing_else() {
        let base: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i * 7).to_le_bytes())
            .collect();
        let mut target = base.clone();
        target[1000..1010].copy_from_slice(b"0123456789");
        target.extend_from_slice(b"appended");
        let d = encode(&base, &target, 3).unwrap();
        assert!(d.len() < 200, "delta of {} bytes", d.len());
        assert_eq!(decode(&base, &d, &Id::of(&target)).unwrap(), target);
        // Another base gives other bytes, caught by the id check.
        let mut other = base.clone();
        other[5] ^= 1;
        assert!(decode(&other, &d, &Id::of(&target)).is_err());
        assert!(decode(&base, b"not zstd", &Id::of(&target)).is_err());
        // A frame that claims a huge size is refused, without reserving that size.
        let mut huge = b"\x28\xb5\x2f\xfd".to_vec(); // zstd magic
        huge.push(0xE0); // single segment, 8-byte content size
        huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
        huge.extend_from_slice(&[0x19, 0x00, 0x00, b'a', b'b', b'c']); // last raw block of 3
        assert!(decode(&[], &huge, &Id::of(b"abc")).is_err());
        // One that tells its true size rebuilds.
        let mut small = b"\x28\xb5\x2f\xfd".to_vec();
        small.extend_from_slice(&[0x20, 3]); // single segment, 1-byte content size
        small.extend_from_slice(&[0x19, 0x00, 0x00, b'a', b'b', b'c']);
        assert_eq!(decode(&[], &small, &Id::of(b"abc")).unwrap(), b"abc");
    }

    #[test]
    fn a_large_pair_still_makes_a_small_delta() {
        // 4 MiB of base, matched whole. (Capping the encoder's hash table at 2^20 entries to
        // save memory lost most of the base: a 3 MB delta.)
        let base: Vec<u8> = (0..(1u32 << 20))
            .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
            .collect();
        let mut target = base.clone();
        for k in 0..10 {
            target[k * 400_000] ^= 0xff;
        }
        let d = encode(&base, &target, 12).unwrap();
        assert!(d.len() < 8192, "delta of {} bytes", d.len());
        assert_eq!(decode(&base, &d, &Id::of(&target)).unwrap(), target);
    }

    #[test]
    fn windows_fit_the_pair() {
        assert_eq!(window_log(0), 10);
        assert_eq!(window_log(1025), 11);
        assert_eq!(window_log(usize::MAX), WINDOW_LOG);
        // A small pair's delta still decodes with the reader's largest window.
        let d = encode(b"hello base", b"hello target", 3).unwrap();
        assert_eq!(
            decode(b"hello base", &d, &Id::of(b"hello target")).unwrap(),
            b"hello target"
        );
    }

    #[test]
    fn cache_names_lead_back_to_their_target() {
        let w = Want {
            target: Id::of(b"t"),
            base: vec![Id::of(b"b")],
        };
        let stem = cache_stem(&w);
        let (sub, name) = stem.split_once('/').unwrap();
        assert_eq!(sub, &w.target.hex()[..2]);
        assert_eq!(name.len(), 64 + 1 + 32);
        assert_eq!(cache_target(&format!("{name}.zd")), Some(w.target));
        assert_eq!(cache_target("short"), None);
        // Another base, another file.
        let other = Want {
            base: Vec::new(),
            ..w.clone()
        };
        assert_ne!(cache_stem(&other), stem);
    }
}
