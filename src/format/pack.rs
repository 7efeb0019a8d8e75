//! Packs and pack indexes.
//!
//! A pack is a file of blobs written back to back, each its own zstd frame (or raw bytes when
//! compression does not pay), so that one blob is one byte range a client can fetch with an HTTP
//! Range request. Every blob is preceded by a small record header repeating its id and lengths,
//! which makes a pack self-describing: its index can be rebuilt from it alone.
//!
//! A pack's name is the blake3 hash of its whole content, so a pack never changes once written.
//! Its index (`.idx`, same name) lists the blobs sorted by id with their payload offsets and ends
//! with a blake3 checksum of itself.

use super::{Id, Reader, StreamReader, Writer};
use crate::error::{corrupt, invalid, Result};

/// First bytes of every pack.
pub const PACK_MAGIC: &[u8; 8] = b"AURUMPK\x01";
/// First bytes of every pack index.
pub const INDEX_MAGIC: &[u8; 8] = b"AURUMIX\x01";
/// Size of the header before each blob's payload in a pack.
pub const RECORD_HEADER: usize = 32 + 1 + 4 + 4;

/// How a blob's payload is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
    /// A member of a group: the payload is one zstd frame holding several blobs (see `store::GROUP_TARGET`).
    ZstdGroup = 2,
}

impl Codec {
    pub fn from_u8(v: u8) -> Result<Codec> {
        match v {
            0 => Ok(Codec::Raw),
            1 => Ok(Codec::Zstd),
            2 => Ok(Codec::ZstdGroup),
            other => Err(corrupt(format!("unknown blob codec {other}"))),
        }
    }
}

/// Where one blob lies in its pack.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IndexEntry {
    pub id: Id,
    /// Offset of the payload (after the record header).
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
    /// For a group member: where the blob starts in the decompressed group (else 0).
    pub inner: u32,
}

/// A pack file (`ext` "pack") or its index ("idx"), relative to the published directory:
/// `packs/XX/<id>.<ext>`.
pub fn path(id: &Id, ext: &str) -> String {
    format!("packs/{}", id.fanned(ext))
}

/// The record header written before a blob's payload.
pub fn record_header(id: &Id, codec: Codec, stored_len: u32, raw_len: u32) -> [u8; RECORD_HEADER] {
    let mut w = Writer::default();
    w.id(id);
    w.u8(codec as u8);
    w.raw(&stored_len.to_le_bytes());
    w.raw(&raw_len.to_le_bytes());
    w.buf.try_into().expect("32 + 1 + 4 + 4 bytes")
}

/// Parses a record header: (id, codec, stored length, raw length).
pub fn parse_record_header(h: &[u8]) -> Result<(Id, Codec, u32, u32)> {
    let mut r = Reader::new(h, "pack record header");
    let id = r.id()?;
    let codec = Codec::from_u8(r.u8()?)?;
    let stored = r.u32_le()?;
    let raw = r.u32_le()?;
    Ok((id, codec, stored, raw))
}

/// The uncompressed body of a group: a member table (count, then id and length of each), then
/// the members' bytes back to back. Returns the body and each member's offset in it.
pub fn encode_group(members: &[(Id, Vec<u8>)]) -> (Vec<u8>, Vec<u32>) {
    // Sized once: grown by doubling, an 8 MiB body held up to 16 MiB (issue 14, live root).
    let table = 10 + members.len() * (32 + 10);
    let data: usize = members.iter().map(|m| m.1.len()).sum();
    let mut w = Writer {
        buf: Vec::with_capacity(table + data),
    };
    w.var(members.len() as u64);
    for (id, data) in members {
        w.id(id);
        w.var(data.len() as u64);
    }
    let mut offsets = Vec::with_capacity(members.len());
    for (_, data) in members {
        offsets.push(w.buf.len() as u32);
        w.raw(data);
    }
    (w.buf, offsets)
}

/// The bytes a member of `len` bytes takes in its group's body: its line in the member table
/// (its id and its length, a varint) and its own bytes. A group's body is these, summed over
/// its members, and the member count before them.
pub fn group_share(len: u32) -> u64 {
    let varint = (u32::BITS - len.leading_zeros()).max(1).div_ceil(7);
    u64::from(len) + 32 + u64::from(varint)
}

/// The members of a group body: (id, offset, length).
pub fn decode_group(body: &[u8]) -> Result<Vec<(Id, u32, u32)>> {
    let mut r = Reader::new(body, "blob group");
    let n = r.var()?;
    let mut table = Vec::with_capacity(n.min(1 << 16) as usize);
    for _ in 0..n {
        let id = r.id()?;
        let len = u32::try_from(r.var()?).map_err(|_| corrupt("blob group length"))?;
        table.push((id, len));
    }
    let mut at = (body.len() - r.remaining()) as u64;
    let mut out = Vec::with_capacity(table.len());
    for (id, len) in table {
        out.push((id, at as u32, len));
        at += u64::from(len);
    }
    if at != body.len() as u64 {
        return Err(corrupt("blob group lengths do not add up"));
    }
    Ok(out)
}

/// Encodes a pack index; `entries` are sorted by id here.
pub fn encode_index(entries: &mut [IndexEntry]) -> Vec<u8> {
    entries.sort_by_key(|a| a.id);
    let mut w = Writer::default();
    w.raw(INDEX_MAGIC);
    w.var(entries.len() as u64);
    for e in entries.iter() {
        w.id(&e.id);
        w.var(e.offset);
        w.var(u64::from(e.stored_len));
        w.var(u64::from(e.raw_len));
        w.u8(e.codec as u8);
        w.var(u64::from(e.inner));
    }
    let sum = blake3::hash(&w.buf);
    w.raw(sum.as_bytes());
    w.buf
}

/// Decodes and checks a pack index.
pub fn decode_index(data: &[u8]) -> Result<Vec<IndexEntry>> {
    let bad_magic = || corrupt("not an aurum pack index (bad magic)");
    let (body, sum) = data
        .split_at_checked(data.len().checked_sub(32).ok_or_else(bad_magic)?)
        .ok_or_else(bad_magic)?;
    let entries = body.strip_prefix(INDEX_MAGIC).ok_or_else(bad_magic)?;
    if blake3::hash(body).as_bytes() != sum {
        return Err(corrupt("pack index checksum does not match"));
    }
    let mut r = Reader::new(entries, "pack index");
    let n = r.var()?;
    let mut out = Vec::with_capacity(n.min(1 << 20) as usize);
    for _ in 0..n {
        out.push(read_index_entry(&mut r)?);
    }
    if !r.at_end() {
        return Err(corrupt("pack index has trailing bytes"));
    }
    Ok(out)
}

fn read_index_entry(r: &mut Reader) -> Result<IndexEntry> {
    let id = r.id()?;
    let offset = r.var()?;
    let stored_len = u32::try_from(r.var()?).map_err(|_| corrupt("pack index length"))?;
    let raw_len = u32::try_from(r.var()?).map_err(|_| corrupt("pack index length"))?;
    let codec = Codec::from_u8(r.u8()?)?;
    let inner = u32::try_from(r.var()?).map_err(|_| corrupt("pack index offset"))?;
    Ok(IndexEntry {
        id,
        offset,
        stored_len,
        raw_len,
        codec,
        inner,
    })
}

/// Ids one `POST /api/v1/locate` asks about, at most. A node wanting more (an install) reads
/// the pack indexes instead: it needs most of every pack it touches, and the indexes are
/// static files a cache tier or a proxy keeps.
pub const MAX_LOCATE: usize = 4096;

/// Where a located blob lies: its pack, its index entry, and for a group member the
/// uncompressed length of the group's body (the `raw_len` of the group's record header).
pub type Located = (Id, IndexEntry, Option<u64>);

/// The body of `POST /api/v1/locate`: the ids, back to back.
pub fn encode_locate_request(ids: &[Id]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.0).collect()
}

/// Parses a locate request (any bytes: a malformed or oversized one is an error).
pub fn decode_locate_request(body: &[u8]) -> Result<Vec<Id>> {
    if body.is_empty() || !body.len().is_multiple_of(32) || body.len() / 32 > MAX_LOCATE {
        return Err(invalid(format!(
            "malformed locate request: 1 to {MAX_LOCATE} blob ids of 32 bytes each expected, \
             got {} bytes",
            body.len()
        )));
    }
    Ok(body
        .chunks_exact(32)
        .map(|c| Id(c.try_into().expect("32 bytes")))
        .collect())
}

/// The answer to a locate request: the packs named, then each asked blob's place, in the
/// order asked (see the book's format chapter).
pub fn encode_locate_answer(places: &[Option<Located>]) -> Vec<u8> {
    let mut packs: Vec<Id> = Vec::new();
    let mut w = Writer::default();
    let mut rest = Writer::default();
    for place in places {
        let Some((pack, e, group_len)) = place else {
            rest.var(0);
            continue;
        };
        let n = match packs.iter().position(|p| p == pack) {
            Some(n) => n,
            None => {
                packs.push(*pack);
                packs.len() - 1
            }
        };
        rest.var(n as u64 + 1);
        rest.var(e.offset);
        rest.var(u64::from(e.stored_len));
        rest.var(u64::from(e.raw_len));
        rest.u8(e.codec as u8);
        rest.var(u64::from(e.inner));
        if e.codec == Codec::ZstdGroup {
            rest.var(group_len.unwrap_or(0));
        }
    }
    w.raw(LOCATE_MAGIC);
    w.var(packs.len() as u64);
    for p in &packs {
        w.id(p);
    }
    w.raw(&rest.buf);
    w.buf
}

/// First bytes of a locate answer.
pub const LOCATE_MAGIC: &[u8; 8] = b"AURUMLC\x01";

/// Parses the answer to a locate request for `asked` (any bytes: one that does not answer
/// each asked id once is an error).
pub fn decode_locate_answer(data: &[u8], asked: &[Id]) -> Result<Vec<Option<Located>>> {
    let body = data
        .strip_prefix(LOCATE_MAGIC)
        .ok_or_else(|| corrupt("not an aurum locate answer (bad magic)"))?;
    let mut r = Reader::new(body, "locate answer");
    let n = r.var()?;
    if n > asked.len() as u64 {
        return Err(corrupt(
            "a locate answer names more packs than blobs were asked",
        ));
    }
    let packs = (0..n).map(|_| r.id()).collect::<Result<Vec<_>>>()?;
    let small = |v: u64| u32::try_from(v).map_err(|_| corrupt("locate answer: length too large"));
    let mut out = Vec::with_capacity(asked.len());
    for id in asked {
        let place = r.var()?;
        if place == 0 {
            out.push(None);
            continue;
        }
        let pack = *usize::try_from(place - 1)
            .ok()
            .and_then(|i| packs.get(i))
            .ok_or_else(|| corrupt("locate answer: a blob in a pack it does not name"))?;
        let e = IndexEntry {
            id: *id,
            offset: r.var()?,
            stored_len: small(r.var()?)?,
            raw_len: small(r.var()?)?,
            codec: Codec::from_u8(r.u8()?)?,
            inner: small(r.var()?)?,
        };
        let group_len = (e.codec == Codec::ZstdGroup).then(|| r.var()).transpose()?;
        out.push(Some((pack, e, group_len)));
    }
    if !r.at_end() {
        return Err(corrupt("locate answer has trailing bytes"));
    }
    Ok(out)
}

/// A pack index read one entry at a time (in id order), for a check of a pack of any size in
/// small memory: it refuses what [`decode_index`] refuses, the checksum after the last entry
/// (an iterator; the first error ends it).
pub struct IndexEntries<R> {
    /// None once read to the end.
    body: Option<StreamReader<std::io::Take<R>>>,
    left: u64,
}

impl<R: std::io::Read> IndexEntries<R> {
    /// The entries of the index `file`, `len` bytes long.
    pub fn new(file: R, len: u64) -> Result<Self> {
        let bad_magic = || corrupt("not an aurum pack index (bad magic)");
        let body_len = len.checked_sub(32).ok_or_else(bad_magic)?;
        let mut body =
            StreamReader::new(file.take(body_len), "pack index", "pack index".into(), true);
        let left = body.parse(|r| {
            if r.raw(INDEX_MAGIC.len()).ok() != Some(&INDEX_MAGIC[..]) {
                return Err(bad_magic());
            }
            r.var()
        })?;
        Ok(IndexEntries {
            body: Some(body),
            left,
        })
    }

    fn next_entry(&mut self) -> Result<Option<IndexEntry>> {
        let Some(body) = &mut self.body else {
            return Ok(None);
        };
        if self.left > 0 {
            self.left -= 1;
            return body.parse(read_index_entry).map(Some);
        }
        if !body.at_end()? {
            return Err(corrupt("pack index has trailing bytes"));
        }
        let hash = body.hash();
        let mut sum = [0u8; 32];
        let mut file = self
            .body
            .take()
            .expect("checked above")
            .into_inner()
            .into_inner();
        file.read_exact(&mut sum)?;
        if hash != Some(Id(sum)) {
            return Err(corrupt("pack index checksum does not match"));
        }
        Ok(None)
    }
}

impl<R: std::io::Read> Iterator for IndexEntries<R> {
    type Item = Result<IndexEntry>;

    fn next(&mut self) -> Option<Result<IndexEntry>> {
        let got = self.next_entry();
        if got.is_err() {
            self.body = None;
        }
        got.transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_groups_body_is_its_members_shares_and_their_count() {
        for lens in [
            vec![0u32],
            vec![5, 127, 128, 16_383, 16_384],
            vec![3; 200],
            vec![1 << 21],
        ] {
            let members: Vec<(Id, Vec<u8>)> = lens
                .iter()
                .enumerate()
                .map(|(i, &n)| (Id([i as u8; 32]), vec![7; n as usize]))
                .collect();
            let (body, _) = encode_group(&members);
            let shares: u64 = lens.iter().map(|&n| group_share(n)).sum();
            let count = if lens.len() < 128 { 1 } else { 2 };
            assert_eq!(body.len() as u64, shares + count, "{lens:?}");
        }
    }

    #[test]
    fn locate_answers_round_trip_and_any_bytes_are_an_error_not_a_panic() {
        let ids: Vec<Id> = (0u8..4).map(|i| Id([i; 32])).collect();
        let entry = |id: Id, codec, inner| IndexEntry {
            id,
            offset: 1 << 33,
            stored_len: 700,
            raw_len: 4096,
            codec,
            inner,
        };
        let places = vec![
            Some((
                Id([9; 32]),
                entry(ids[0], Codec::ZstdGroup, 77),
                Some(9 << 20),
            )),
            None,
            Some((Id([8; 32]), entry(ids[2], Codec::Zstd, 0), None)),
            Some((Id([9; 32]), entry(ids[3], Codec::Raw, 0), None)),
        ];
        let answer = encode_locate_answer(&places);
        assert_eq!(decode_locate_answer(&answer, &ids).unwrap(), places);
        // Each pack is named once.
        assert_eq!(answer.windows(32).filter(|w| *w == [9u8; 32]).count(), 1);
        // Asked for more or fewer ids than it answers: refused.
        assert!(decode_locate_answer(&answer, &ids[..3]).is_err());
        assert!(decode_locate_answer(&answer, &[ids.clone(), ids.clone()].concat()).is_err());
        for cut in 0..answer.len() {
            assert!(
                decode_locate_answer(&answer[..cut], &ids).is_err(),
                "cut at {cut}"
            );
        }
        let request = encode_locate_request(&ids);
        assert_eq!(decode_locate_request(&request).unwrap(), ids);
        assert!(decode_locate_request(&request[..31]).is_err());
        assert!(decode_locate_request(&[]).is_err());
        assert!(decode_locate_request(&vec![0; 32 * (MAX_LOCATE + 1)]).is_err());
    }

    #[test]
    fn index_of_any_bytes_is_an_error_not_a_panic() {
        for n in 0..64 {
            assert!(decode_index(&vec![0xa5; n]).is_err(), "{n} bytes");
            let mut d = INDEX_MAGIC.to_vec();
            d.resize(n.max(INDEX_MAGIC.len()), 0);
            assert!(decode_index(&d).is_err(), "magic and {n} bytes");
        }
    }

    #[test]
    fn record_header_of_any_length() {
        for n in 0..RECORD_HEADER {
            assert!(parse_record_header(&vec![0u8; n]).is_err(), "{n} bytes");
        }
        let mut h = vec![7u8; 32];
        h.push(Codec::Zstd as u8);
        h.extend_from_slice(&10u32.to_le_bytes());
        h.extend_from_slice(&20u32.to_le_bytes());
        h.push(99);
        let (id, codec, stored, raw) = parse_record_header(&h).unwrap();
        assert_eq!((id, codec, stored, raw), (Id([7; 32]), Codec::Zstd, 10, 20));
    }

    #[test]
    fn index_round_trip_and_checksum() {
        let mut entries = vec![
            IndexEntry {
                id: Id::of(b"b"),
                offset: 49,
                stored_len: 10,
                raw_len: 20,
                codec: Codec::Zstd,
                inner: 0,
            },
            IndexEntry {
                id: Id::of(b"a"),
                offset: 100,
                stored_len: 5,
                raw_len: 5,
                codec: Codec::ZstdGroup,
                inner: 7,
            },
        ];
        let mut bytes = encode_index(&mut entries);
        assert_eq!(decode_index(&bytes).unwrap(), entries);
        assert_eq!(streamed(&bytes).unwrap(), entries);
        // Every byte flipped and every length cut: refused whole and streamed alike.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x41;
            assert!(
                decode_index(&bad).is_err() && streamed(&bad).is_err(),
                "flip at {i}"
            );
            assert!(streamed(&bytes[..i]).is_err(), "cut at {i}");
        }
        assert!(streamed(&[&bytes[..], b"x"].concat()).is_err());
        bytes[12] ^= 1;
        assert!(decode_index(&bytes).is_err());
    }

    fn streamed(bytes: &[u8]) -> Result<Vec<IndexEntry>> {
        IndexEntries::new(bytes, bytes.len() as u64)?.collect()
    }

    #[test]
    fn group_round_trip() {
        let members = vec![
            (Id::of(b"a"), b"a".to_vec()),
            (Id::of(b"bc"), b"bc".to_vec()),
        ];
        let (body, offsets) = encode_group(&members);
        let table = decode_group(&body).unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table[1], (Id::of(b"bc"), offsets[1], 2));
        assert_eq!(&body[offsets[1] as usize..][..2], b"bc");
    }

    proptest::proptest! {
        /// Untrusted bytes (a server's index, a pack's record) are refused or read, never a
        /// panic; the index's magic and checksum are made right so that its body is parsed.
        #[test]
        fn any_bytes_decode_or_fail(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut index = [&INDEX_MAGIC[..], &data].concat();
            let sum = blake3::hash(&index);
            index.extend_from_slice(sum.as_bytes());
            let _ = decode_index(&index);
            let _ = decode_index(&data);
            let _ = decode_group(&data);
            let _ = parse_record_header(&data);
        }
    }

    #[test]
    fn record_header_round_trip() {
        let id = Id::of(b"x");
        let h = record_header(&id, Codec::Zstd, 7, 9);
        assert_eq!(parse_record_header(&h).unwrap(), (id, Codec::Zstd, 7, 9));
    }
}
