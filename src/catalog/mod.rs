//! The SQLite catalog: images, revisions, tags, the blob index, the stat cache and events.
//!
//! The catalog is the repository's source of truth for names (which revisions an image has,
//! where tags point); the refs/ files mirror it for static HTTP clients. Its blob index can be
//! rebuilt from the pack indexes. SQLite runs in WAL mode so that readers never wait for a
//! capture in progress.

mod inventory;
pub mod migrations;
pub mod nodes;
mod remotes;
pub mod rollouts;
mod templates;
pub mod tokens;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::error::Result;
use crate::format::pack::{Codec, IndexEntry};
use crate::format::refs::LoggedRevision;
use crate::format::wire::StatKey;
use crate::format::Id;
use crate::store::FinishedPack;

pub use remotes::Remote;
pub use templates::TemplateVersion;

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// One revision of an image.
#[derive(Clone, Debug, Serialize)]
pub struct Revision {
    pub image: String,
    pub number: u32,
    #[serde(serialize_with = "hex_id")]
    pub id: Id,
    #[serde(serialize_with = "hex_opt")]
    pub parent: Option<Id>,
    pub created: i64,
    pub message: String,
    pub source: String,
    pub files: u64,
    pub bytes: u64,
    pub new_bytes: u64,
    pub tags: Vec<String>,
}

impl Revision {
    /// `compute@3`.
    pub fn name(&self) -> String {
        format!("{}@{}", self.image, self.number)
    }
}

fn hex_id<S: serde::Serializer>(id: &Id, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&id.hex())
}

fn hex_opt<S: serde::Serializer>(id: &Option<Id>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(&id.hex()),
        None => s.serialize_none(),
    }
}

/// Numbers for a new revision.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RevisionStats {
    pub files: u64,
    pub bytes: u64,
    pub new_bytes: u64,
}

/// One image with a summary of its revisions.
#[derive(Clone, Debug, Serialize)]
pub struct ImageSummary {
    pub name: String,
    pub created: i64,
    pub revisions: u32,
    pub newest: Option<Revision>,
    pub tags: Vec<TagRef>,
}

/// A tag and the revision number it points at.
#[derive(Clone, Debug, Serialize)]
pub struct TagRef {
    pub tag: String,
    pub number: u32,
}

pub use crate::format::report::{NodeAction, NodeReport, Outcome};

/// A node's latest report, as `aurum nodes` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeState {
    #[serde(flatten)]
    pub report: NodeReport,
    pub address: Option<String>,
    pub reported: i64,
}

/// A node's report as `nodes` and `node_reports` hold it: hostname, image, revision, action,
/// result, bytes, seconds, address, detail, time, boot (JSON; a value another aurum wrote
/// that this one cannot read shows as none).
fn state_row(r: &rusqlite::Row) -> rusqlite::Result<NodeState> {
    Ok(NodeState {
        report: NodeReport {
            hostname: r.get(0)?,
            image: r.get(1)?,
            revision: r.get(2)?,
            action: r.get(3)?,
            result: r.get(4)?,
            bytes: r.get::<_, i64>(5)? as u64,
            seconds: r.get(6)?,
            detail: r.get(8)?,
            boot: r
                .get::<_, Option<String>>(10)?
                .and_then(|j| serde_json::from_str(&j).ok()),
        },
        address: r.get(7)?,
        reported: r.get(9)?,
    })
}

/// The open catalog.
/// What the stat cache holds for an entry: its encoded content (empty for all but files) and
/// its encoded xattrs (`None` when not recorded).
pub type StatHit = (Vec<u8>, Option<Vec<u8>>);

/// A stat cache row a capture stages: path, stat data, and the encoded content (empty for all
/// but files) and xattrs, or `None` for a row to remove.
pub type StatRow = (Vec<u8>, StatKey, Option<(Vec<u8>, Vec<u8>)>);

pub struct Catalog {
    conn: Connection,
}

fn id_from_hex(s: String) -> rusqlite::Result<Id> {
    Id::from_hex(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, "bad id".into())
    })
}

fn id_from_blob(b: Vec<u8>) -> rusqlite::Result<Id> {
    let arr: [u8; 32] = b.try_into().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, "bad id".into())
    })?;
    Ok(Id(arr))
}

/// Rows [`step_through`] steps over, at most, from one key to the next before it searches the
/// index instead.
const STEPS: usize = 16;

/// Answers each of `keys` from `st`, a query of the rows whose key (its column 0, a blob) is
/// at least its last parameter (`lead` are the ones before it), in key order: `answer` gets
/// the row holding the key, or `None`.
///
/// Keys asked in ascending order, as a capture asks them (a directory's paths; a batch's blob
/// ids, sorted), are answered by walking the rows from one key to the next, with one search
/// of the index for the first: a search per key was most of the time of these lookups. The
/// index is searched again for a key that comes before the one asked last, and for one the
/// walk does not reach within [`STEPS`] rows (a subdirectory's subtree between two names),
/// or within `after_search` rows when the key before it needed a search. A caller whose keys
/// may lie thinly over a large table (blob ids: a few new blobs against a large repository)
/// gives 1 there, so that such keys cost a search each, as they did before, and one step
/// more; keys 2 to 16 rows apart then cost a search each too, unless a run of them is
/// reached by walking.
fn step_through<T>(
    st: &mut rusqlite::Statement,
    lead: &[&dyn rusqlite::ToSql],
    keys: &[&[u8]],
    after_search: usize,
    mut answer: impl FnMut(usize, Option<&rusqlite::Row>) -> Result<T>,
) -> Result<Vec<T>> {
    use rusqlite::fallible_streaming_iterator::FallibleStreamingIterator;
    use std::cmp::Ordering;
    let mut out = Vec::with_capacity(keys.len());
    // One search of the index per pass, from the first key not answered yet.
    while out.len() < keys.len() {
        let from = keys[out.len()];
        let bound: Vec<&dyn rusqlite::ToSql> = lead.iter().copied().chain([&from as _]).collect();
        let mut rows = st.query(bound.as_slice())?;
        rows.advance()?;
        // Whether the key being answered got the search; the rows the walk may step over to
        // reach it.
        let (mut searched, mut budget) = (true, 0);
        while let Some(&key) = keys.get(out.len()) {
            let mut steps = 0;
            // `None`: not reached; it gets a search.
            let found = loop {
                let Some(row) = rows.get() else {
                    break Some(None);
                };
                // Keys are blobs; the query returns no row of another type (they sort below
                // every blob).
                let at = match row.get_ref(0)? {
                    rusqlite::types::ValueRef::Blob(b) => b.cmp(key),
                    _ => Ordering::Less,
                };
                match at {
                    Ordering::Less if steps < budget => {
                        rows.advance()?;
                        steps += 1;
                    }
                    Ordering::Less => break None,
                    Ordering::Greater => break Some(None),
                    Ordering::Equal => break Some(Some(row)),
                }
            };
            let Some(row) = found else {
                if searched {
                    // A search that lands below its key would be searched again forever: a
                    // query not of the form above, or a damaged index.
                    return Err(crate::error::corrupt(
                        "the catalog returned rows out of order: its index may be damaged \
                         (`sqlite3 aurum.db 'PRAGMA integrity_check'` in the repository \
                         checks it)",
                    ));
                }
                break;
            };
            out.push(answer(out.len(), row)?);
            (budget, searched) = (if searched { after_search } else { STEPS }, false);
            if keys.get(out.len()).is_some_and(|&next| next < key) {
                break;
            }
        }
    }
    Ok(out)
}

/// Inserts a pack row and its blob rows; `conflict` is what SQLite does with a blob already
/// listed (`IGNORE` keeps its old place, `REPLACE` moves it here).
fn insert_pack(tx: &rusqlite::Transaction, pack: &FinishedPack, conflict: &str) -> Result<()> {
    tx.execute(
        "INSERT OR IGNORE INTO packs(id, size, blobs, created) VALUES (?1, ?2, ?3, ?4)",
        params![
            pack.id.hex(),
            pack.size as i64,
            pack.entries.len() as i64,
            now()
        ],
    )?;
    let key: i64 = tx.query_row(
        "SELECT key FROM packs WHERE id = ?1",
        [pack.id.hex()],
        |r| r.get(0),
    )?;
    let mut st = tx.prepare_cached(&format!(
        "INSERT OR {conflict} INTO blobs(id, pack, offset, stored_len, raw_len, codec, inner)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))?;
    for e in &pack.entries {
        st.execute(params![
            &e.id.0[..],
            key,
            e.offset as i64,
            e.stored_len,
            e.raw_len,
            e.codec as u8,
            e.inner
        ])?;
    }
    Ok(())
}

/// One image as a pull records it ([`Catalog::record_pulled`]).
#[derive(Clone, Debug)]
pub struct PulledImage {
    /// Its name here (`REMOTE/IMAGE`, or the source's name for a mirror).
    pub name: String,
    /// The revisions to add, oldest first.
    pub revisions: Vec<LoggedRevision>,
    /// Every tag of the image in the source.
    pub tags: Vec<(String, u32)>,
    /// Delete the image's tags the source does not have (an image pulled from a remote
    /// mirrors its tags; a mirror pull keeps tags made here).
    pub exact_tags: bool,
}

/// Inserts a revision row of `image` (`conflict`: `""`, or `"OR IGNORE"` to keep a row of
/// that number already there).
fn insert_revision(
    tx: &rusqlite::Transaction,
    image: &str,
    r: &LoggedRevision,
    conflict: &str,
) -> Result<()> {
    tx.execute(
        &format!(
            "INSERT {conflict} INTO revisions({REVISION_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"
        ),
        params![
            image,
            r.number,
            r.id.hex(),
            r.parent.map(|p| p.hex()),
            r.created,
            r.message,
            r.source,
            r.files as i64,
            r.bytes as i64,
            r.new_bytes as i64
        ],
    )?;
    Ok(())
}

fn record_pulled_image(tx: &rusqlite::Transaction, im: &PulledImage) -> Result<()> {
    let created = im.revisions.first().map_or_else(now, |r| r.created);
    tx.execute(
        "INSERT OR IGNORE INTO images(name, created) VALUES (?1, ?2)",
        params![im.name, created],
    )?;
    for r in &im.revisions {
        insert_revision(tx, &im.name, r, "OR IGNORE")?;
    }
    if im.exact_tags {
        tx.execute("DELETE FROM tags WHERE image = ?1", [&im.name])?;
    }
    for (tag, number) in &im.tags {
        tx.execute(
            "INSERT INTO tags(image, tag, number, created) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(image, tag) DO UPDATE SET number = excluded.number, created = excluded.created",
            params![im.name, tag, number, now()],
        )?;
    }
    if !im.revisions.is_empty() {
        tx.execute(
            "INSERT INTO events(time, kind, image, detail) VALUES (?1, 'pull', ?2, ?3)",
            params![
                now(),
                im.name,
                format!("pulled {} revisions of {}", im.revisions.len(), im.name)
            ],
        )?;
    }
    Ok(())
}

const REVISION_COLUMNS: &str =
    "image, number, id, parent, created, message, source, files, bytes, new_bytes";

/// The lookup of a blob's place: one per blob a checkout or an update from a local repository
/// reads.
const BLOB_PLACE: &str = "SELECT p.id, b.offset, b.stored_len, b.raw_len, b.codec, b.inner
     FROM blobs b JOIN packs p ON p.key = b.pack WHERE b.id = ?1";

impl Catalog {
    /// Opens (creating it when absent) the catalog at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Catalog> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(60))?;
        // The query planner's stability guarantee: a statement's plan does not depend on the
        // values bound to it. Without it SQLite marks a statement whose plan a bound value
        // might change (its planner's `x = ?` heuristic) to be prepared again when its
        // bindings are cleared, which rusqlite does each time a cached statement goes back to
        // its cache: every blob lookup parsed its SQL anew, and parsing 20,000 of them (with
        // SQLite's allocator mutex shared by the checkout's threads) was a third of a
        // small-file checkout's CPU (issue #14; test
        // `cached_blob_lookups_are_not_prepared_again`).
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrations::migrate(&mut conn)?;
        Ok(Catalog { conn })
    }

    /// Writes a consistent copy of the catalog at `path` into `to` (a new file): read through
    /// a read-only connection, so that the original is neither migrated nor written (its own
    /// aurum may be older than this one).
    pub fn snapshot(path: &Path, to: &Path) -> Result<()> {
        use rusqlite::OpenFlags;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(60))?;
        conn.execute("VACUUM INTO ?1", [to.to_string_lossy()])?;
        drop(conn);
        Connection::open(to)?.pragma_update(None, "journal_mode", "DELETE")?;
        Ok(())
    }

    /// Empties, in a [`Catalog::snapshot`] at `path`, what can be made again: the blob index
    /// and the pack list (rebuilt from the pack indexes, [`Catalog::add_pack`] in the order
    /// the record keeps), and the stat cache (which only speeds up that repository's own
    /// captures). They are most of a busy catalog's size: a row per blob.
    pub fn strip_snapshot(path: &Path) -> Result<()> {
        let conn = Connection::open(path)?;
        let has = |table: &str| -> Result<bool> {
            Ok(conn
                .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
                .exists([table])?)
        };
        for table in ["statcache", "blobs", "packs"] {
            if has(table)? {
                conn.execute(&format!("DELETE FROM {table}"), [])?;
            }
        }
        conn.execute_batch("VACUUM")?;
        Ok(())
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    // ---- blobs and packs ----

    /// Opens a read transaction that lasts until the connection is dropped: every later
    /// query reads the same snapshot, without taking and releasing the WAL read lock each
    /// time. For a connection that looks up many blobs and then ends (a checkout's, a local
    /// fetch's): a query per blob otherwise made two `fcntl` locks, an `fstat` and a page read
    /// each, and the threads' connections waited on SQLite's one shared-memory mutex (3,173 of
    /// the 3,404 futex calls of a checkout of 20,000 small files). Never for a long-lived
    /// connection: it would hide what is written after and keep the WAL from being
    /// checkpointed.
    pub fn hold_snapshot(&self) -> Result<()> {
        self.conn.execute_batch("BEGIN DEFERRED")?;
        Ok(())
    }

    /// Where a blob is stored, if the repository has it ([`BLOB_PLACE`]).
    pub fn blob(&self, id: &Id) -> Result<Option<(Id, IndexEntry)>> {
        let mut st = self.conn.prepare_cached(BLOB_PLACE)?;
        let row = st
            .query_row([&id.0[..]], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, u32>(3)?,
                    r.get::<_, u8>(4)?,
                    r.get::<_, u32>(5)?,
                ))
            })
            .optional()?;
        let Some((pack, offset, stored_len, raw_len, codec, inner)) = row else {
            return Ok(None);
        };
        Ok(Some((
            id_from_hex(pack)?,
            IndexEntry {
                id: *id,
                offset: offset as u64,
                stored_len,
                raw_len,
                codec: Codec::from_u8(codec)?,
                inner,
            },
        )))
    }

    /// Runs many reads in one read transaction: outside one, SQLite takes and drops its shared
    /// lock (a handful of fcntl calls) around every single statement.
    pub fn reading<T>(&self, f: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        let tx = self.conn.unchecked_transaction()?;
        let out = f(self)?;
        tx.commit()?;
        Ok(out)
    }

    /// Every blob id the repository has, into a filter (for a remote capture's agent).
    pub fn known_blobs(&self) -> Result<crate::format::wire::Known> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))?;
        let mut known = crate::format::wire::Known::with_capacity(n as usize);
        let mut st = self.conn.prepare("SELECT id FROM blobs")?;
        let mut rows = st.query([])?;
        while let Some(row) = rows.next()? {
            let bytes: Vec<u8> = row.get(0)?;
            if let Ok(id) = <[u8; 32]>::try_from(bytes.as_slice()) {
                known.insert(&Id(id));
            }
        }
        Ok(known)
    }

    /// Which of `ids` the repository has (the answers in the same order), looked up in id
    /// order (see [`step_through`]). Call it inside [`Catalog::reading`].
    pub fn has_blobs(&self, ids: &[&Id]) -> Result<Vec<bool>> {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_unstable_by_key(|&i| ids[i]);
        let keys: Vec<&[u8]> = order.iter().map(|&i| &ids[i].0[..]).collect();
        let mut st = self
            .conn
            .prepare_cached("SELECT id FROM blobs WHERE id >= ?1 ORDER BY id")?;
        let found = step_through(&mut st, &[], &keys, 1, |_, row| Ok(row.is_some()))?;
        let mut out = vec![false; ids.len()];
        for (&i, has) in order.iter().zip(found) {
            out[i] = has;
        }
        Ok(out)
    }

    /// Whether the repository has a blob.
    pub fn has_blob(&self, id: &Id) -> Result<bool> {
        let mut st = self
            .conn
            .prepare_cached("SELECT 1 FROM blobs WHERE id = ?1")?;
        Ok(st.exists([&id.0[..]])?)
    }

    /// Records a durable pack and its blobs. A blob already stored elsewhere keeps its old place.
    pub fn add_pack(&mut self, pack: &FinishedPack) -> Result<()> {
        let tx = self.conn.transaction()?;
        insert_pack(&tx, pack, "IGNORE")?;
        tx.commit()?;
        Ok(())
    }

    /// Every pack: (id, size, blob count).
    pub fn packs(&self) -> Result<Vec<(Id, u64, u64)>> {
        let mut st = self
            .conn
            .prepare("SELECT id, size, blobs FROM packs ORDER BY key DESC")?;
        let rows = st.query_map([], |r| {
            Ok((
                id_from_hex(r.get(0)?)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The blobs the catalog places in a pack, in pack order.
    pub fn pack_blobs(&self, pack: &Id) -> Result<Vec<IndexEntry>> {
        self.pack_blobs_after(pack, None, i64::MAX)
    }

    /// Up to `limit` of the blobs the catalog places in a pack, in pack order, from the one
    /// after `after` (its offset and inner offset): a pack's blobs a page at a time.
    pub fn pack_blobs_after(
        &self,
        pack: &Id,
        after: Option<&IndexEntry>,
        limit: i64,
    ) -> Result<Vec<IndexEntry>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, offset, stored_len, raw_len, codec, inner FROM blobs
             WHERE pack = (SELECT key FROM packs WHERE id = ?1) AND (offset, inner) > (?2, ?3)
             ORDER BY offset, inner LIMIT ?4",
        )?;
        let (offset, inner) = after.map_or((-1, -1), |e| (e.offset as i64, i64::from(e.inner)));
        let rows = st.query_map(rusqlite::params![pack.hex(), offset, inner, limit], |r| {
            Ok((
                id_from_blob(r.get(0)?)?,
                r.get::<_, i64>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, u32>(3)?,
                r.get::<_, u8>(4)?,
                r.get::<_, u32>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, offset, stored_len, raw_len, codec, inner) = row?;
            out.push(IndexEntry {
                id,
                offset: offset as u64,
                stored_len,
                raw_len,
                codec: Codec::from_u8(codec)?,
                inner,
            });
        }
        Ok(out)
    }

    /// Moves blobs out of `old` packs into `new` ones in one transaction (gc's repack).
    pub fn replace_packs(&mut self, old: &[Id], new: &[FinishedPack]) -> Result<()> {
        let tx = self.conn.transaction()?;
        for p in old {
            tx.execute(
                "DELETE FROM blobs WHERE pack = (SELECT key FROM packs WHERE id = ?1)",
                [p.hex()],
            )?;
            tx.execute("DELETE FROM packs WHERE id = ?1", [p.hex()])?;
        }
        for pack in new {
            insert_pack(&tx, pack, "REPLACE")?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets single blobs (verify does this for damaged ones, so that the next capture
    /// stores them again).
    pub fn remove_blobs(&mut self, ids: &[Id]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached("DELETE FROM blobs WHERE id = ?1")?;
            for id in ids {
                st.execute([&id.0[..]])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    // ---- images, revisions, tags ----

    pub fn image_exists(&self, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM images WHERE name = ?1")?
            .exists([name])?)
    }

    fn revision_row(&self, r: &rusqlite::Row) -> rusqlite::Result<Revision> {
        Ok(Revision {
            image: r.get(0)?,
            number: r.get(1)?,
            id: id_from_hex(r.get(2)?)?,
            parent: r
                .get::<_, Option<String>>(3)?
                .map(id_from_hex)
                .transpose()?,
            created: r.get(4)?,
            message: r.get(5)?,
            source: r.get(6)?,
            files: r.get::<_, i64>(7)? as u64,
            bytes: r.get::<_, i64>(8)? as u64,
            new_bytes: r.get::<_, i64>(9)? as u64,
            tags: Vec::new(),
        })
    }

    fn with_tags(&self, mut revs: Vec<Revision>) -> Result<Vec<Revision>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT tag FROM tags WHERE image = ?1 AND number = ?2 ORDER BY tag")?;
        for rev in &mut revs {
            rev.tags = st
                .query_map(params![rev.image, rev.number], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
        }
        Ok(revs)
    }

    fn query_revisions(&self, cond: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<Revision>> {
        let sql = format!("SELECT {REVISION_COLUMNS} FROM revisions WHERE {cond}");
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(args, |r| self.revision_row(r))?;
        let revs = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        self.with_tags(revs)
    }

    /// Revisions of an image, newest first.
    pub fn revisions(&self, image: &str) -> Result<Vec<Revision>> {
        self.query_revisions("image = ?1 ORDER BY number DESC", &[&image])
    }

    pub fn revision(&self, image: &str, number: u32) -> Result<Option<Revision>> {
        Ok(self
            .query_revisions("image = ?1 AND number = ?2", &[&image, &number])?
            .pop())
    }

    pub fn newest(&self, image: &str) -> Result<Option<Revision>> {
        Ok(self
            .query_revisions("image = ?1 ORDER BY number DESC LIMIT 1", &[&image])?
            .pop())
    }

    /// The revision last captured from `source` (as [`crate::capture::Source::describe`]
    /// names it), whatever its image.
    pub fn newest_from_source(&self, source: &str) -> Result<Option<Revision>> {
        Ok(self
            .query_revisions(
                "source = ?1 ORDER BY created DESC, rowid DESC LIMIT 1",
                &[&source],
            )?
            .pop())
    }

    /// Revisions whose id starts with a hex prefix (lowercase).
    pub fn revisions_by_prefix(&self, prefix: &str) -> Result<Vec<Revision>> {
        let pattern = format!("{prefix}%");
        self.query_revisions("id LIKE ?1 ORDER BY image, number", &[&pattern])
    }

    /// Every distinct revision id any image holds.
    pub fn all_revision_ids(&self) -> Result<Vec<Id>> {
        let mut st = self.conn.prepare("SELECT DISTINCT id FROM revisions")?;
        let rows = st.query_map([], |r| id_from_hex(r.get(0)?))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every revision of every image, for verify's report.
    pub fn all_revisions(&self) -> Result<Vec<Revision>> {
        self.query_revisions("1 ORDER BY image, number", &[])
    }

    /// Appends a revision to an image (creating the image); returns its number.
    pub fn add_revision(
        &mut self,
        image: &str,
        id: &Id,
        parent: Option<&Id>,
        message: &str,
        source: &str,
        stats: &RevisionStats,
    ) -> Result<u32> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO images(name, created) VALUES (?1, ?2)",
            params![image, now()],
        )?;
        let number: u32 = tx.query_row(
            "SELECT COALESCE(MAX(number), 0) + 1 FROM revisions WHERE image = ?1",
            [image],
            |r| r.get(0),
        )?;
        let row = LoggedRevision {
            number,
            id: *id,
            parent: parent.copied(),
            created: now(),
            message: message.to_string(),
            source: source.to_string(),
            files: stats.files,
            bytes: stats.bytes,
            new_bytes: stats.new_bytes,
        };
        insert_revision(&tx, image, &row, "")?;
        tx.execute(
            "INSERT INTO events(time, kind, image, detail) VALUES (?1, 'revision', ?2, ?3)",
            params![
                now(),
                image,
                format!("{image}@{number} {} {message}", id.short())
            ],
        )?;
        tx.commit()?;
        Ok(number)
    }

    /// Records what a pull brought, in one transaction (a pull killed before it commits
    /// recorded nothing): each image's revisions with their numbers, ids and dates as they are
    /// in the source, and its tags (with `exact_tags`, the image's other tags are deleted).
    /// Revisions an image already has (same number) are left as they are; the caller checked
    /// that their ids agree.
    pub fn record_pulled(&mut self, images: &[PulledImage]) -> Result<()> {
        let tx = self.conn.transaction()?;
        for im in images {
            record_pulled_image(&tx, im)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every image with its newest revision and tags.
    pub fn images(&self) -> Result<Vec<ImageSummary>> {
        let mut st = self
            .conn
            .prepare("SELECT name, created FROM images ORDER BY name")?;
        let rows: Vec<(String, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::new();
        for (name, created) in rows {
            let revisions: u32 = self.conn.query_row(
                "SELECT COUNT(*) FROM revisions WHERE image = ?1",
                [&name],
                |r| r.get(0),
            )?;
            out.push(ImageSummary {
                newest: self.newest(&name)?,
                tags: self
                    .tags(&name)?
                    .into_iter()
                    .map(|(tag, number)| TagRef { tag, number })
                    .collect(),
                name,
                created,
                revisions,
            });
        }
        Ok(out)
    }

    /// Tags of an image: (tag, revision number).
    pub fn tags(&self, image: &str) -> Result<Vec<(String, u32)>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT tag, number FROM tags WHERE image = ?1 ORDER BY tag")?;
        let rows = st.query_map([image], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn set_tag(&mut self, image: &str, tag: &str, number: u32) -> Result<()> {
        self.conn.execute(
            "INSERT INTO tags(image, tag, number, created) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(image, tag) DO UPDATE SET number = excluded.number, created = excluded.created",
            params![image, tag, number, now()],
        )?;
        self.event(
            "tag",
            Some(image),
            &format!("{image}:{tag} -> {image}@{number}"),
        )
    }

    /// Deletes a tag; false when there was none.
    pub fn delete_tag(&mut self, image: &str, tag: &str) -> Result<bool> {
        let n = self.conn.execute(
            "DELETE FROM tags WHERE image = ?1 AND tag = ?2",
            params![image, tag],
        )?;
        if n > 0 {
            self.event("untag", Some(image), &format!("{image}:{tag}"))?;
        }
        Ok(n > 0)
    }

    /// Copies an image's revisions and tags under a new name (the manifests are shared).
    pub fn copy_image(&mut self, src: &str, dst: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO images(name, created) VALUES (?1, ?2)",
            params![dst, now()],
        )?;
        tx.execute(
            &format!(
                "INSERT INTO revisions({REVISION_COLUMNS})
                 SELECT ?2, number, id, parent, created, message, source, files, bytes, new_bytes
                 FROM revisions WHERE image = ?1"
            ),
            params![src, dst],
        )?;
        tx.execute(
            "INSERT INTO tags(image, tag, number, created)
             SELECT ?2, tag, number, created FROM tags WHERE image = ?1",
            params![src, dst],
        )?;
        tx.execute(
            "INSERT INTO events(time, kind, image, detail) VALUES (?1, 'cpimage', ?2, ?3)",
            params![now(), dst, format!("copied from {src}")],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn rename_image(&mut self, old: &str, new: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        // Tags follow through ON UPDATE CASCADE on (image, number) once revisions move, but
        // SQLite cascades only one level, so the tag rows move explicitly first.
        tx.execute("PRAGMA defer_foreign_keys = ON", [])?;
        tx.execute(
            "UPDATE tags SET image = ?2 WHERE image = ?1",
            params![old, new],
        )?;
        tx.execute(
            "UPDATE images SET name = ?2 WHERE name = ?1",
            params![old, new],
        )?;
        tx.execute(
            "INSERT INTO events(time, kind, image, detail) VALUES (?1, 'mvimage', ?2, ?3)",
            params![now(), new, format!("renamed from {old}")],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn delete_image(&mut self, name: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM tags WHERE image = ?1", [name])?;
        tx.execute("DELETE FROM revisions WHERE image = ?1", [name])?;
        tx.execute("DELETE FROM images WHERE name = ?1", [name])?;
        tx.execute(
            "INSERT INTO events(time, kind, image, detail) VALUES (?1, 'rmimage', ?2, 'removed')",
            params![now(), name],
        )?;
        tx.commit()?;
        Ok(())
    }

    // ---- stat cache ----

    /// What the stat cache holds for entries with exactly this stat data, in one read
    /// transaction: (content as [`crate::format::manifest::encode_content`] wrote it, empty for
    /// all but files; xattrs as [`crate::format::manifest::encode_xattrs`] wrote them, `None`
    /// when the row predates their recording).
    ///
    /// A scan asks a directory's entries at a time, in path order, the order of the table's
    /// rows, and a remote capture a batch's files, in path order too: the rows are walked
    /// rather than searched for one by one ([`step_through`]; the subtree of a subdirectory
    /// between two names is searched past).
    pub fn statcache_lookup<'a>(
        &self,
        source: &str,
        entries: impl IntoIterator<Item = (&'a [u8], &'a StatKey)>,
    ) -> Result<Vec<Option<StatHit>>> {
        let lookup = |cat: &Self| -> Result<Vec<Option<StatHit>>> {
            let key: Option<i64> = cat
                .conn
                .prepare_cached("SELECT key FROM sources WHERE name = ?1")?
                .query_row([source], |r| r.get(0))
                .optional()?;
            let asked: Vec<(&[u8], &StatKey)> = entries.into_iter().collect();
            let Some(key) = key else {
                return Ok(vec![None; asked.len()]);
            };
            let mut st = cat.conn.prepare_cached(
                "SELECT path, size, mtime_ns, ctime_ns, ino, content, xattrs FROM statcache
                 WHERE source = ?1 AND path >= ?2 ORDER BY path",
            )?;
            let paths: Vec<&[u8]> = asked.iter().map(|&(p, _)| p).collect();
            // A directory's paths lie close together, but for the subtrees between them.
            step_through(&mut st, &[&key], &paths, STEPS, |i, row| {
                let Some(row) = row else { return Ok(None) };
                let k = asked[i].1;
                let stat = (
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                );
                if stat != (k.size as i64, k.mtime_ns, k.ctime_ns, k.ino as i64) {
                    return Ok(None);
                }
                Ok(Some((row.get(5)?, row.get(6)?)))
            })
        };
        // A connection that holds a snapshot reads in it; else in one transaction.
        if self.conn.is_autocommit() {
            self.reading(lookup)
        } else {
            lookup(self)
        }
    }

    /// Starts staging the stat cache rows of a capture (see [`Self::statcache_stage`]): in a
    /// temporary table of this connection, so that the capture's batches add to it without
    /// holding the whole tree's rows in memory, and nothing reaches the cache until
    /// [`Self::statcache_commit`].
    pub fn statcache_stage_begin(&self) -> Result<()> {
        self.conn.execute_batch(
            "DROP TABLE IF EXISTS temp.statcache_staged;
             CREATE TEMP TABLE statcache_staged(
                 path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,
                 ino INTEGER, content BLOB, xattrs BLOB) WITHOUT ROWID;",
        )?;
        Ok(())
    }

    /// Adds one batch of a capture's rows: (path, stat data, encoded content, encoded xattrs).
    pub fn statcache_stage(&mut self, _source: &str, rows: &[StatRow]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO temp.statcache_staged(path, size, mtime_ns, ctime_ns, ino, content, xattrs)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (path, stat, row) in rows {
                let (content, xattrs) = match row {
                    Some((c, x)) => (Some(c), Some(x)),
                    None => (None, None),
                };
                st.execute(params![
                    path,
                    stat.size as i64,
                    stat.mtime_ns,
                    stat.ctime_ns,
                    stat.ino as i64,
                    content,
                    xattrs
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Brings what the stat cache knows of a golden client to what its latest capture staged:
    /// the rows staged replace theirs, the rows staged for removal go, and the `kept` rows the
    /// capture found exact stay. With nothing kept, every other row of the golden client goes.
    /// Returns whether rows of paths the capture did not see may remain (the golden client's
    /// row count is not `kept` plus the rows staged): [`Self::statcache_prune`] removes them.
    pub fn statcache_commit(&mut self, source: &str, kept: u64) -> Result<bool> {
        let tx = self.conn.transaction()?;
        tx.execute("INSERT OR IGNORE INTO sources(name) VALUES (?1)", [source])?;
        let key: i64 = tx.query_row("SELECT key FROM sources WHERE name = ?1", [source], |r| {
            r.get(0)
        })?;
        if kept == 0 {
            tx.execute("DELETE FROM statcache WHERE source = ?1", [key])?;
        } else {
            tx.execute(
                "DELETE FROM statcache WHERE source = ?1
                 AND path IN (SELECT path FROM temp.statcache_staged WHERE content IS NULL)",
                [key],
            )?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO statcache(source, path, size, mtime_ns, ctime_ns, ino, content, xattrs)
             SELECT ?1, path, size, mtime_ns, ctime_ns, ino, content, xattrs
             FROM temp.statcache_staged WHERE content IS NOT NULL",
            [key],
        )?;
        let staged: i64 = tx.query_row(
            "SELECT count(*) FROM temp.statcache_staged WHERE content IS NOT NULL",
            [],
            |r| r.get(0),
        )?;
        let rows: i64 = tx.query_row(
            "SELECT count(*) FROM statcache WHERE source = ?1",
            [key],
            |r| r.get(0),
        )?;
        tx.execute_batch("DROP TABLE temp.statcache_staged")?;
        tx.commit()?;
        Ok(rows != staged + kept as i64)
    }

    /// Removes the rows of a golden client whose path is not among `paths` (the entries of
    /// its latest capture).
    pub fn statcache_prune(
        &mut self,
        source: &str,
        paths: impl Iterator<Item = Result<Vec<u8>>>,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute_batch(
            "DROP TABLE IF EXISTS temp.statcache_seen;
             CREATE TEMP TABLE statcache_seen(path BLOB PRIMARY KEY) WITHOUT ROWID;",
        )?;
        {
            let mut st =
                tx.prepare_cached("INSERT OR IGNORE INTO temp.statcache_seen(path) VALUES (?1)")?;
            for path in paths {
                st.execute([path?])?;
            }
        }
        tx.execute(
            "DELETE FROM statcache WHERE source = (SELECT key FROM sources WHERE name = ?1)
             AND path NOT IN (SELECT path FROM temp.statcache_seen)",
            [source],
        )?;
        tx.execute_batch("DROP TABLE temp.statcache_seen")?;
        tx.commit()?;
        Ok(())
    }

    /// Drops what a capture staged (the cache stays as it was).
    pub fn statcache_discard(&self) -> Result<()> {
        self.conn
            .execute_batch("DROP TABLE IF EXISTS temp.statcache_staged")?;
        Ok(())
    }

    // ---- nodes ----

    /// Records what a node reports (it becomes the node's current state) and keeps the report.
    pub fn record_report(&mut self, r: &NodeReport, address: Option<&str>) -> Result<()> {
        let tx = self.conn.transaction()?;
        let t = now();
        let boot = r
            .boot
            .as_ref()
            .map(|b| serde_json::to_string(b).expect("strings and numbers serialise"));
        tx.execute(
            "INSERT INTO node_reports(time, hostname, image, revision, action, result, bytes, seconds, address, detail, boot)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![t, r.hostname, r.image, r.revision, r.action, r.result, r.bytes as i64, r.seconds, address, r.detail, boot],
        )?;
        // A health check or a stage says nothing of what the node runs: `nodes` keeps the
        // last report that does (its history has them all).
        if !matches!(r.action, NodeAction::Health | NodeAction::Stage) {
            tx.execute(
                "INSERT OR REPLACE INTO nodes(hostname, image, revision, action, result, bytes, seconds, address, detail, reported, boot)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![r.hostname, r.image, r.revision, r.action, r.result, r.bytes as i64, r.seconds, address, r.detail, t, boot],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Each node's latest report of `action` (e.g. its last health check), by hostname.
    pub fn latest_reports(&self, action: NodeAction) -> Result<Vec<NodeState>> {
        let mut st = self.conn.prepare(
            "SELECT hostname, image, revision, action, result, bytes, seconds, address, detail, time, boot
             FROM node_reports r WHERE action = ?1
             AND time = (SELECT MAX(time) FROM node_reports WHERE hostname = r.hostname AND action = ?1)
             GROUP BY hostname ORDER BY hostname",
        )?;
        let rows = st.query_map([action], state_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A mark in the node reports: those received after it are [`Self::reports_after`].
    pub fn report_mark(&self) -> Result<i64> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(MAX(rowid), 0) FROM node_reports",
            [],
            |r| r.get(0),
        )?)
    }

    /// The reports of `action` that `hostname` sent after `mark`, oldest first (a diskless
    /// node's rollout waits for the health report of its new boot this way).
    pub fn reports_after(
        &self,
        hostname: &str,
        action: NodeAction,
        mark: i64,
    ) -> Result<Vec<NodeState>> {
        let mut st = self.conn.prepare(
            "SELECT hostname, image, revision, action, result, bytes, seconds, address, detail, time, boot
             FROM node_reports WHERE hostname = ?1 AND action = ?2 AND rowid > ?3 ORDER BY rowid",
        )?;
        let rows = st.query_map(params![hostname, action, mark], state_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every node that has reported, with its latest report.
    pub fn nodes(&self) -> Result<Vec<NodeState>> {
        let mut st = self.conn.prepare(
            "SELECT hostname, image, revision, action, result, bytes, seconds, address, detail, reported, boot
             FROM nodes ORDER BY hostname",
        )?;
        let rows = st.query_map([], state_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ---- events ----

    pub fn event(&self, kind: &str, image: Option<&str>, detail: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO events(time, kind, image, detail) VALUES (?1, ?2, ?3, ?4)",
            params![now(), kind, image, detail],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::pack::{Codec, IndexEntry};

    /// A pack of 100 slots of 64 bytes holding the blobs `ids` (each with its slot), stored raw.
    fn raw_pack<'a>(ids: impl Iterator<Item = (usize, &'a Id)>) -> crate::store::FinishedPack {
        crate::store::FinishedPack {
            id: Id::of(b"pack"),
            size: 100 * 64,
            entries: ids
                .map(|(i, id)| IndexEntry {
                    id: *id,
                    offset: i as u64 * 64,
                    stored_len: 60,
                    raw_len: 60,
                    codec: Codec::Raw,
                    inner: 0,
                })
                .collect(),
        }
    }

    /// Every lookup of a checkout runs the one cached statement, never prepared again (it was,
    /// for every new id bound, until the planner's stability guarantee was set).
    #[test]
    fn cached_blob_lookups_are_not_prepared_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&dir.path().join("aurum.db")).unwrap();
        let ids: Vec<Id> = (0..100u32).map(|i| Id::of(&i.to_le_bytes())).collect();
        c.add_pack(&raw_pack(ids.iter().enumerate())).unwrap();
        for id in &ids {
            assert_eq!(c.blob(id).unwrap().unwrap().1.id, *id);
        }
        let st = c.conn.prepare_cached(BLOB_PLACE).unwrap();
        assert_eq!(
            st.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "the blob lookup was prepared again"
        );
    }

    /// Lookups that walk the rows ([`step_through`]) give what a search per key gives: keys
    /// asked out of order, twice, absent, past the last row, and with a long run of rows (a
    /// subdirectory's subtree) between two of them.
    #[test]
    fn lookups_stepping_through_rows_answer_as_searches_do() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&dir.path().join("aurum.db")).unwrap();
        let ids: Vec<Id> = (0..100u32).map(|i| Id::of(&i.to_le_bytes())).collect();
        // Every third blob is stored.
        c.add_pack(&raw_pack(ids.iter().enumerate().step_by(3)))
            .unwrap();
        let mut asked: Vec<&Id> = ids.iter().rev().chain(ids.iter().step_by(7)).collect();
        asked.swap(3, 60);
        let got = c.reading(|c| c.has_blobs(&asked)).unwrap();
        let want: Vec<bool> = asked.iter().map(|id| c.has_blob(id).unwrap()).collect();
        assert_eq!(got, want);
        assert_eq!(got.iter().filter(|&&h| h).count(), 34 + 5);
        // A query that does not start at its key is refused, not searched again forever.
        {
            let mut wrong = c
                .conn
                .prepare("SELECT id FROM blobs WHERE ?1 IS NOT NULL ORDER BY id")
                .unwrap();
            let last = ids.iter().step_by(3).max().unwrap();
            assert!(
                step_through(&mut wrong, &[], &[&last.0[..]], STEPS, |_, r| Ok(
                    r.is_some()
                ))
                .is_err()
            );
        }

        let key = |n: u64| StatKey {
            size: n,
            mtime_ns: n as i64,
            ctime_ns: n as i64,
            ino: n,
            maybe_sparse: false,
        };
        let mut paths: Vec<Vec<u8>> = vec![b"a".to_vec(), b"a/a".to_vec(), b"a/b".to_vec()];
        paths.extend((0..40).map(|i| format!("a/b/{i:02}").into_bytes()));
        paths.extend([b"a/c".to_vec(), b"a/d".to_vec(), b"b".to_vec()]);
        let rows: Vec<StatRow> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), key(i as u64), Some((p.clone(), vec![i as u8]))))
            .collect();
        c.statcache_stage_begin().unwrap();
        c.statcache_stage("src", &rows).unwrap();
        c.statcache_commit("src", 0).unwrap();
        // A row whose path is text, not a blob (no aurum writes one): no path matches it.
        c.conn
            .execute(
                "INSERT INTO statcache SELECT source, 'a/bb', size, mtime_ns, ctime_ns, ino, \
                 content, xattrs FROM statcache WHERE path = x'612f62'",
                [],
            )
            .unwrap();
        let stat = |p: &[u8]| key(paths.iter().position(|q| q == p).unwrap() as u64);
        let (a, b, cc, d, e) = (
            stat(b"a/a"),
            stat(b"a/b"),
            stat(b"a/c"),
            stat(b"a/d"),
            key(7),
        );
        let asked: Vec<(&[u8], &StatKey)> = vec![
            (b"a/a", &a),
            (b"a/b", &b),
            (b"a/bb", &b),
            (b"a/c", &cc),
            (b"a/d", &e), // other stat data: no answer
            (b"a/e", &e),
            (b"a/d", &d),
            (b"a/a", &a),
            (b"z", &e),
        ];
        let got = c.statcache_lookup("src", asked.iter().copied()).unwrap();
        let hit = |p: &[u8]| {
            let i = paths.iter().position(|q| q == p).unwrap();
            Some((p.to_vec(), Some(vec![i as u8])))
        };
        let want = vec![
            hit(b"a/a"),
            hit(b"a/b"),
            None,
            hit(b"a/c"),
            None,
            None,
            hit(b"a/d"),
            hit(b"a/a"),
            None,
        ];
        assert_eq!(got, want);
        // And what a search per path finds.
        let mut search = c
            .conn
            .prepare(
                "SELECT content, xattrs FROM statcache
                 WHERE source = (SELECT key FROM sources WHERE name = 'src') AND path = ?1
                 AND size = ?2 AND mtime_ns = ?3 AND ctime_ns = ?4 AND ino = ?5",
            )
            .unwrap();
        let searched: Vec<Option<StatHit>> = asked
            .iter()
            .map(|(p, k)| {
                search
                    .query_row(
                        params![p, k.size as i64, k.mtime_ns, k.ctime_ns, k.ino as i64],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .unwrap()
            })
            .collect();
        assert_eq!(got, searched);
        assert_eq!(
            c.statcache_lookup("other", asked.iter().copied()).unwrap(),
            vec![None; asked.len()]
        );
    }
}
