//! Reading tar archives member by member, for `import`.
//!
//! We read the archive ourselves rather than through the `tar` crate's iterator for two
//! reasons. Its pax parser splits records at newlines, so the `SCHILY.acl.access` records GNU
//! tar `--acls` writes (multi-line values) and any binary xattr value holding a newline fail
//! the whole archive as "malformed pax extension"; pax records are length-prefixed and are
//! parsed that way here. And it hides the sparse map of a sparse member (it hands out the holes
//! as zeros), while we keep the holes: old GNU sparse members (`tar -S`, the default GNU
//! format) and the pax sparse formats 0.0, 0.1 and 1.0 (`tar --format=pax -S`) are all read
//! into a list of data extents. The 512-byte header fields are still decoded by `tar::Header`.
//!
//! Old dialects are read as the tars that wrote them meant: a `0` or typeless member whose
//! name ends in `/` is a directory (v7), so is GNU's incremental `D`; a GNU volume label (`V`,
//! blank size) is skipped; Solaris's `X` is a pax header; and a hard link header that carries
//! the file's size is followed by data only when the next block is not a header.

use std::io::{self, Read};

use crate::error::{corrupt, Result};

const BLOCK: usize = 512;

/// One archive member, with its extension headers applied.
pub(crate) struct Member {
    pub name: Vec<u8>,
    /// The header's type flag (`b'0'`, `b'5'`, ...); old GNU sparse members read as `b'0'`.
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub link: Vec<u8>,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// The file's size (its apparent size, holes included, for a sparse member).
    pub size: u64,
    /// Data extents (offset, length) of a sparse member; the member's data is these extents
    /// laid end to end. `None` for a dense member.
    pub extents: Option<Vec<(u64, u64)>>,
    /// Pax records (global ones first, then the member's own), in archive order.
    pub pax: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Member {
    /// The last value of pax record `key`.
    pub fn pax_value(&self, key: &[u8]) -> Option<&[u8]> {
        self.pax
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

/// A tar stream read member by member.
pub(crate) struct Reader<R: Read> {
    inner: R,
    /// Data bytes of the current member not read yet, then its padding.
    left: u64,
    pad: u64,
    global: Vec<(Vec<u8>, Vec<u8>)>,
    /// A header block read ahead (after a hard link header that claims a size) and not used yet.
    pending: Option<[u8; BLOCK]>,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Reader<R> {
        Reader {
            inner,
            left: 0,
            pad: 0,
            global: Vec::new(),
            pending: None,
        }
    }

    /// The data of the member last returned by [`Reader::next`] (for a sparse member, its data
    /// extents end to end).
    pub fn data(&mut self) -> Data<'_, R> {
        Data { r: self }
    }

    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        // Only a hard link's data can start with a block read ahead, and it is skipped whole.
        if n >= BLOCK as u64 && self.pending.take().is_some() {
            n -= BLOCK as u64;
        }
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = buf.len().min(n as usize);
            self.inner.read_exact(&mut buf[..want])?;
            n -= want as u64;
        }
        Ok(())
    }

    /// Reads a whole block; `false` at a clean end of the stream.
    fn block(&mut self, buf: &mut [u8; BLOCK]) -> Result<bool> {
        if let Some(pending) = self.pending.take() {
            *buf = pending;
            return Ok(true);
        }
        let mut got = 0;
        while got < BLOCK {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(corrupt("the archive ends in the middle of a header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// The data of an extension header, whole (long names, pax records).
    fn small_data(&mut self, size: u64, what: &str) -> Result<Vec<u8>> {
        if size > 64 << 20 {
            return Err(corrupt(format!("{what} of {size} bytes; refusing it")));
        }
        let mut data = vec![0u8; size as usize];
        self.inner.read_exact(&mut data)?;
        self.skip(padding(size))?;
        Ok(data)
    }

    /// The next member, or `None` at the end of the archive.
    pub fn next(&mut self) -> Result<Option<Member>> {
        let (left, pad) = (self.left, self.pad);
        self.left = 0;
        self.pad = 0;
        self.skip(left + pad)?;
        let mut long_name = None;
        let mut long_link = None;
        let mut local: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut block = [0u8; BLOCK];
        loop {
            if !self.block(&mut block)? {
                return Ok(None);
            }
            if block.iter().all(|&b| b == 0) {
                // The end-of-archive marker (two zero blocks; one is enough for us).
                return Ok(None);
            }
            let h = tar::Header::from_byte_slice(&block);
            check_sum(&block)?;
            if block[156] == b'V' {
                // A GNU volume label (`tar -V`) names the archive, not a file; GNU tar leaves its
                // size blank.
                let size = h.entry_size().unwrap_or(0);
                self.skip(size + padding(size))?;
                continue;
            }
            let size = h.entry_size()?;
            match block[156] {
                // Solaris tar's extended header is a pax header under another letter.
                b'x' | b'X' => {
                    local.extend(pax_records(&self.small_data(size, "pax header")?)?);
                    continue;
                }
                b'g' => {
                    let records = pax_records(&self.small_data(size, "pax header")?)?;
                    self.global.extend(records);
                    continue;
                }
                b'L' => {
                    long_name = Some(trim_nul(self.small_data(size, "long name")?));
                    continue;
                }
                b'K' => {
                    long_link = Some(trim_nul(self.small_data(size, "long link")?));
                    continue;
                }
                _ => {}
            }
            let mut pax = self.global.clone();
            pax.extend(local);
            let mut m = Member {
                name: long_name.unwrap_or_else(|| h.path_bytes().into_owned()),
                typeflag: block[156],
                mode: h.mode()?,
                uid: h.uid()? as u32,
                gid: h.gid()? as u32,
                // A blank or odd mtime field imports as 0 (pax `mtime` may give the real one).
                mtime: h.mtime().unwrap_or(0) as i64,
                mtime_nsec: 0,
                link: long_link
                    .or_else(|| h.link_name_bytes().map(|l| l.into_owned()))
                    .unwrap_or_default(),
                dev_major: 0,
                dev_minor: 0,
                size,
                extents: None,
                pax,
            };
            // Other members may leave the device fields blank, which is no number.
            if matches!(m.typeflag, b'3' | b'4') {
                m.dev_major = h.device_major()?.unwrap_or(0);
                m.dev_minor = h.device_minor()?.unwrap_or(0);
            }
            let mut stored = size;
            if m.typeflag == b'S' {
                let (extents, real) = self.old_gnu_sparse(h)?;
                m.extents = Some(extents);
                m.size = real;
                m.typeflag = b'0';
            }
            stored = m.apply_pax(stored)?;
            if m.typeflag == b'1' && stored > 0 && self.no_data_follows()? {
                // Old tars put the file's size in a hard link header and no data after it
                // (libarchive and Python's tarfile ignore it too); star may store the data.
                stored = 0;
            }
            // Old tars (v7) mark a directory only by the `/` ending its name; GNU tar's
            // incremental dumps mark it `D` and store its listing, which we skip.
            if (matches!(m.typeflag, b'\0' | b'0') && m.name.ends_with(b"/") && m.extents.is_none())
                || m.typeflag == b'D'
            {
                m.typeflag = b'5';
            }
            self.left = stored;
            self.pad = padding(stored);
            if m.pax_value(b"GNU.sparse.major") == Some(b"1") {
                self.pax_sparse_1(&mut m)?;
            }
            if let Some(ext) = &m.extents {
                check_extents(&m, ext, self.left)?;
            }
            return Ok(Some(m));
        }
    }

    /// Whether the block after the current header is another header or the end of the archive
    /// (rather than data); keeps the block for [`Reader::next`].
    fn no_data_follows(&mut self) -> Result<bool> {
        let mut block = [0u8; BLOCK];
        if !self.block(&mut block)? {
            return Ok(true);
        }
        let header = block.iter().all(|&b| b == 0) || check_sum(&block).is_ok();
        self.pending = Some(block);
        Ok(header)
    }

    /// The sparse map of an old GNU sparse header and its extension blocks; the real size.
    fn old_gnu_sparse(&mut self, h: &tar::Header) -> Result<(Vec<(u64, u64)>, u64)> {
        let gnu = h
            .as_gnu()
            .ok_or_else(|| corrupt("a GNU sparse member without a GNU header"))?;
        let mut extents = Vec::new();
        let mut add = |s: &tar::GnuSparseHeader| -> Result<()> {
            if !s.is_empty() {
                extents.push((s.offset()?, s.length()?));
            }
            Ok(())
        };
        for s in &gnu.sparse {
            add(s)?;
        }
        let mut more = gnu.is_extended();
        while more {
            let mut ext = tar::GnuExtSparseHeader::new();
            if !self.block(ext.as_mut_bytes())? {
                return Err(corrupt("the archive ends in a sparse map"));
            }
            for s in ext.sparse() {
                add(s)?;
            }
            more = ext.is_extended();
        }
        Ok((extents, gnu.real_size()?))
    }

    /// Pax sparse 1.0: the map is at the start of the data, decimal numbers one a line (the
    /// count, then offset and length pairs), padded to a block.
    fn pax_sparse_1(&mut self, m: &mut Member) -> Result<()> {
        let mut text = Vec::new();
        let mut numbers: Vec<u64> = Vec::new();
        let mut want: Option<u64> = None;
        while want.is_none_or(|n| (numbers.len() as u64) < 1 + 2 * n) {
            let mut block = [0u8; BLOCK];
            if self.left < BLOCK as u64 || !self.block(&mut block)? {
                return Err(corrupt("a pax sparse map runs past its member's data"));
            }
            self.left -= BLOCK as u64;
            text.extend_from_slice(&block);
            let mut lines = text.split(|&b| b == b'\n').collect::<Vec<_>>();
            lines.pop(); // The part after the last newline is not complete yet.
            numbers = lines
                .iter()
                .map(|l| decimal(l, "pax sparse map"))
                .collect::<Result<_>>()?;
            if let (None, Some(&n)) = (want, numbers.first()) {
                want = Some(n);
                if n > 1 << 24 {
                    return Err(corrupt("a pax sparse map of too many extents"));
                }
            }
        }
        let pairs = want
            .and_then(|n| numbers.get(1..1 + 2 * n as usize))
            .ok_or_else(|| corrupt("a pax sparse map runs past its member's data"))?;
        m.extents = Some(pairs_of(pairs));
        Ok(())
    }
}

impl Member {
    /// Applies the member's pax records to its header fields; returns the size of its data in
    /// the archive.
    fn apply_pax(&mut self, mut stored: u64) -> Result<u64> {
        let mut sparse_offsets = Vec::new();
        let mut sparse_lengths = Vec::new();
        let mut sparse_name = None;
        let mut real_size = None;
        let mut map = None;
        for (k, v) in &self.pax {
            let num = || decimal(v, "pax header");
            match k.as_slice() {
                b"path" => self.name = v.clone(),
                b"linkpath" => self.link = v.clone(),
                b"size" => stored = num()?,
                b"uid" => self.uid = num()? as u32,
                b"gid" => self.gid = num()? as u32,
                b"mtime" => (self.mtime, self.mtime_nsec) = pax_time(v)?,
                b"SCHILY.devmajor" => self.dev_major = num()? as u32,
                b"SCHILY.devminor" => self.dev_minor = num()? as u32,
                b"GNU.sparse.name" => sparse_name = Some(v.clone()),
                b"GNU.sparse.realsize" | b"GNU.sparse.size" => real_size = Some(num()?),
                b"GNU.sparse.offset" => sparse_offsets.push(num()?),
                b"GNU.sparse.numbytes" => sparse_lengths.push(num()?),
                b"GNU.sparse.map" => map = Some(v.clone()),
                _ => {}
            }
        }
        if let Some(name) = sparse_name {
            self.name = name;
        }
        if let Some(real) = real_size {
            self.size = real;
            if self.extents.is_none() {
                self.extents = Some(Vec::new());
            }
        }
        if !sparse_offsets.is_empty() || !sparse_lengths.is_empty() {
            // Format 0.0: offset and length records alternate.
            if sparse_offsets.len() != sparse_lengths.len() {
                return Err(corrupt("a pax sparse map with unpaired records"));
            }
            self.extents = Some(sparse_offsets.into_iter().zip(sparse_lengths).collect());
        }
        if let Some(map) = map {
            // Format 0.1: "offset,length,offset,length...".
            let n: Vec<u64> = if map.is_empty() {
                Vec::new()
            } else {
                map.split(|&b| b == b',')
                    .map(|x| decimal(x, "pax sparse map"))
                    .collect::<Result<_>>()?
            };
            if !n.len().is_multiple_of(2) {
                return Err(corrupt("a pax sparse map with an odd count"));
            }
            self.extents = Some(pairs_of(&n));
        }
        if self.extents.is_none() {
            self.size = stored;
        }
        Ok(stored)
    }
}

/// Refuses a sparse map whose extents overlap, go past the file's size, or do not add up to
/// the data stored.
fn check_extents(m: &Member, ext: &[(u64, u64)], stored: u64) -> Result<()> {
    let mut end = 0u64;
    let mut total = 0u64;
    for &(off, len) in ext {
        let stop = off.checked_add(len);
        if off < end || stop.is_none_or(|s| s > m.size) {
            return Err(corrupt(format!(
                "archive member `{}` has a sparse map out of order or past its size",
                String::from_utf8_lossy(&m.name)
            )));
        }
        end = off + len;
        total += len;
    }
    if total != stored {
        return Err(corrupt(format!(
            "archive member `{}` stores {stored} bytes but its sparse map lists {total}",
            String::from_utf8_lossy(&m.name)
        )));
    }
    Ok(())
}

/// The data of the current member.
pub(crate) struct Data<'a, R: Read> {
    r: &'a mut Reader<R>,
}

impl<R: Read> Read for Data<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(self.r.left.min(usize::MAX as u64) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.r.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends in the middle of a member",
            ));
        }
        self.r.left -= n as u64;
        Ok(n)
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

fn check_sum(block: &[u8; BLOCK]) -> Result<()> {
    let h = tar::Header::from_byte_slice(block);
    let want = h.cksum()?;
    let spaces = 8 * u32::from(b' ');
    let unsigned: u32 = block[..148]
        .iter()
        .chain(&block[156..])
        .map(|&b| u32::from(b))
        .sum::<u32>()
        + spaces;
    // Some old tars summed signed bytes.
    let signed: i64 = block[..148]
        .iter()
        .chain(&block[156..])
        .map(|&b| i64::from(b as i8))
        .sum::<i64>()
        + i64::from(spaces);
    if unsigned == want || signed == i64::from(want) {
        Ok(())
    } else {
        Err(corrupt(
            "archive header checksum mismatch (not a tar archive, or damaged)",
        ))
    }
}

fn decimal(v: &[u8], what: &str) -> Result<u64> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            corrupt(format!(
                "{what}: `{}` is not a number",
                String::from_utf8_lossy(v)
            ))
        })
}

/// A pax time, `SECONDS[.FRACTION]`, possibly negative.
fn pax_time(v: &[u8]) -> Result<(i64, u32)> {
    let s = String::from_utf8_lossy(v);
    let bad = || corrupt(format!("pax header: `{s}` is not a time"));
    let (secs, frac) = s.split_once('.').unwrap_or((&s, ""));
    let negative = secs.starts_with('-');
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let digits: String = frac.chars().chain("000000000".chars()).take(9).collect();
    let nsec: u32 = digits.parse().map_err(|_| bad())?;
    // -1.25 is 1.25 s before the epoch: -2 s plus 0.75 s.
    Ok(if negative && nsec > 0 {
        (secs - 1, 1_000_000_000 - nsec)
    } else {
        (secs, nsec)
    })
}

/// (offset, length) pairs of a sparse map's numbers (an odd last one is refused before).
fn pairs_of(numbers: &[u64]) -> Vec<(u64, u64)> {
    numbers
        .chunks_exact(2)
        .filter_map(|p| match *p {
            [offset, len] => Some((offset, len)),
            _ => None,
        })
        .collect()
}

/// Splits pax extended header data into its records, `LENGTH KEY=VALUE\n`, where LENGTH counts
/// the whole record: values may hold newlines and any other byte.
pub(crate) fn pax_records(data: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let bad = || corrupt("malformed pax extended header in the archive");
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let space = rest.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let (digits, _) = rest.split_at(space);
        let len: usize = std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        // LENGTH counts the digits, the space, the record and its newline.
        let (whole, after) = rest.split_at_checked(len).ok_or_else(bad)?;
        let record = whole
            .get(space + 1..)
            .and_then(|r| r.strip_suffix(b"\n"))
            .ok_or_else(bad)?;
        let (key, value) = record.split_at(record.iter().position(|&b| b == b'=').ok_or_else(bad)?);
        out.push((key.to_vec(), value.get(1..).unwrap_or_default().to_vec()));
        rest = after;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_may_hold_newlines() {
        let data = b"30 mtime=1795334383.553253758\n56 SCHILY.acl.access=user::rw-\nuser:1000:rw-\nother::r--\n";
        let r = pax_records(data).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].0, b"SCHILY.acl.access");
        assert_eq!(r[1].1, b"user::rw-\nuser:1000:rw-\nother::r--");
        assert!(pax_records(b"99 key=short\n").is_err());
    }

    /// #13: every malformed record is an error, never a panic (a tar archive is input).
    #[test]
    fn malformed_pax_records_are_errors() {
        for bad in [
            &b"2 \n"[..],
            b"3 a\n",
            b"6 a=b\r",
            b"x a=b\n",
            b"1",
            b" a=b\n",
            b"18446744073709551615 a=b\n",
        ] {
            assert!(pax_records(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            pax_records(b"6 a=b\n").unwrap(),
            vec![(b"a".to_vec(), b"b".to_vec())]
        );
        assert_eq!(
            pax_records(b"5 a=\n").unwrap(),
            vec![(b"a".to_vec(), Vec::new())]
        );
        assert_eq!(pairs_of(&[1, 2, 3, 4, 5]), vec![(1, 2), (3, 4)]);
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(b"12.5").unwrap(), (12, 500_000_000));
        assert_eq!(pax_time(b"7").unwrap(), (7, 0));
        assert_eq!(pax_time(b"-1.25").unwrap(), (-2, 750_000_000));
    }
}
