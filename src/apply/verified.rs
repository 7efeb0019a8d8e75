//! A source whose revisions are checked before a node uses them: signed by a trusted key, not
//! older than what the node runs, not stale.
//!
//! [`Verified`] wraps any [`RevisionSource`]. Its `resolve` (which every node command calls
//! before it fetches a manifest: updateclient and its overrides, `rollback --to`, a staged
//! update, `install`) resolves the name, fetches the revision's signatures and decides with
//! [`trust::accept`]; a refusal is an [`Error::Untrusted`] raised before anything on the node
//! is written. Everything after that is covered by ids: the signed manifest id names every
//! file's content, and the source checks each manifest and blob it hands on against its id.
//!
//! Two attacks need more than a signature, because they serve old revisions that were validly
//! signed (TUF's and Uptane's names for them):
//!
//! - **rollback**: a revision of the image the node runs with a lower number than the one it
//!   runs (or than an override it runs) is refused unless the administrator asked for it
//!   (`--allow-downgrade`). The signature binds the image name and number, so a server cannot
//!   pass an old revision off under another number. Numbers are compared within an image only:
//!   a node changes images only when its own configuration or command line says so.
//! - **freeze**: a server that keeps answering with the state of months ago. With
//!   `max-age`, a revision whose newest trusted signature is older than that is refused;
//!   the master re-signs its heads (`aurum sign IMAGE`, from cron) more often.
//!
//! `--allow-downgrade` waives the freeze check too, but only for what it allows: a revision
//! older than the one the node runs (whose signature is naturally old, as only heads are
//! signed again), with a warning naming the age. A revision that is not a downgrade is held
//! to `max-age` with or without the flag, so passing it by habit opens no door to a freeze.

use std::sync::Mutex;

use crate::apply::node::RevRef;
use crate::apply::source::{BlobSinkFn, DeltaSinkFn, RevisionSource, Target};
use crate::catalog::NodeReport;
use crate::error::{Error, Result};
use crate::format::manifest::Manifest;
use crate::format::signature;
use crate::format::Id;
use crate::progress::Progress;
use crate::repo::delta::Want;
use crate::trust::{self, Accepted, TrustedKeys, Wanted};

/// What a node demands of the revisions it takes.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Empty: nothing is checked (and [`Verified`] is not needed).
    pub keys: TrustedKeys,
    /// Refuse a revision whose newest trusted signature is older than this, in seconds.
    pub max_age: Option<i64>,
    /// Let the node go to a lower revision number of an image than the one it runs.
    pub allow_downgrade: bool,
}

/// A revision that passed, and the signature it passed with.
#[derive(Clone, Debug)]
pub struct Passed {
    pub revision: String,
    pub id: Id,
    pub signature: Accepted,
}

/// A source whose `resolve` refuses what the policy does not accept.
pub struct Verified {
    inner: Box<dyn RevisionSource>,
    policy: Policy,
    /// The revisions the node runs (its image and the overrides laid over it).
    running: Vec<RevRef>,
    passed: Mutex<Vec<Passed>>,
}

impl Verified {
    /// Checks what `inner` resolves against `policy`; `current` is the node's current
    /// revision (none on a bare node).
    pub fn new(inner: Box<dyn RevisionSource>, policy: Policy, current: Option<RevRef>) -> Self {
        let running = current
            .map(|c| {
                let mut v = c.overrides.clone();
                v.push(c);
                v
            })
            .unwrap_or_default();
        Verified {
            inner,
            policy,
            running,
            passed: Mutex::new(Vec::new()),
        }
    }

    /// Every revision that passed so far, in the order resolved.
    pub fn passed(&self) -> Vec<Passed> {
        self.passed.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The decision for one resolved revision.
    fn check(&self, t: &Target) -> Result<Passed> {
        let source = self.inner.describe();
        let (Some(image), Some(number)) = (t.image.as_deref(), t.number) else {
            return Err(Error::Untrusted(format!(
                "refusing revision {} from {source}: this node checks signatures, and a \
                 signature is found by image and number; name the revision as IMAGE, IMAGE@N or \
                 IMAGE:TAG (and check that the server publishes refs/IMAGE/revisions). Nothing \
                 on this node was changed",
                t.id.short()
            )));
        };
        let name = format!("{image}@{number} ({})", t.id.short());
        let refuse = |why: String| {
            Error::Untrusted(format!(
                "refusing {name} from {source}: {why}. Nothing on this node was changed"
            ))
        };
        let sigs = match self.inner.signatures(image, number)? {
            None => Vec::new(),
            Some(data) => signature::decode(&data).map_err(|p| {
                refuse(format!(
                    "its signatures file {} is unreadable ({p}): the server's copy is damaged \
                     or was altered; run `aurum verify` on the server",
                    signature::path(image, number)
                ))
            })?,
        };
        let want = Wanted {
            image,
            number,
            id: t.id,
            parent: None,
            created: None,
        };
        let accepted =
            trust::accept(&sigs, &want, &self.policy.keys).map_err(|r| refuse(r.to_string()))?;
        // The newer revision of this image the node runs, when `number` goes back from it.
        let newer = self
            .running
            .iter()
            .filter(|r| r.image.as_deref() == Some(image))
            .filter_map(|r| r.number)
            .filter(|n| *n > number)
            .max();
        if let (Some(run), false) = (newer, self.policy.allow_downgrade) {
            return Err(refuse(format!(
                "this node runs {image}@{run}, a newer revision; a server offering an older \
                 revision as the one to take is what a rollback attack looks like. To go back \
                 on purpose, rerun with --allow-downgrade (or use `aurum rollback`)"
            )));
        }
        if let Some(max) = self.policy.max_age {
            let age = crate::repo::signatures::now() - accepted.signed;
            if age > max && newer.is_some() {
                // The downgrade the administrator asked for: an old revision's signature is
                // old (the master signs its heads again, not every revision), so the freeze
                // check, made for the newest state, is waived for it, and said.
                log::warn!(
                    "{name}: its newest trusted signature (by {}) was made {} ago, longer than \
                     max-age ({}); taken because --allow-downgrade asked to go back from \
                     {image}@{}",
                    accepted.key,
                    human_age(age),
                    human_age(max),
                    newer.unwrap_or_default()
                );
            } else if age > max {
                return Err(refuse(format!(
                    "its newest trusted signature (by {}) was made {} ago, longer than max-age \
                     ({}): the server may be replaying old state (a freeze attack), or the master \
                     has not signed again. On the master run `aurum sign {image} --sign-key KEY` \
                     (from cron, more often than max-age), or raise max-age in \
                     node.toml. --allow-downgrade waives this only for a revision older than \
                     the one the node runs",
                    accepted.key,
                    human_age(age),
                    human_age(max)
                )));
            }
        }
        let passed = Passed {
            revision: format!("{image}@{number}"),
            id: t.id,
            signature: accepted,
        };
        if let Ok(mut p) = self.passed.lock() {
            p.push(passed.clone());
        }
        Ok(passed)
    }
}

/// `3d 4h`, `2h 10m`, `45s`: an age as max-age is written.
pub fn human_age(secs: i64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3_600),
        s if s >= 3_600 => format!("{}h {}m", s / 3_600, s % 3_600 / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

impl RevisionSource for Verified {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn resolve(&self, spec: &str) -> Result<Target> {
        let t = self.inner.resolve(spec)?;
        self.check(&t)?;
        Ok(t)
    }

    fn manifest(&self, id: &Id) -> Result<Manifest> {
        self.inner.manifest(id)
    }

    fn manifest_from(&self, id: &Id, base: (&Id, &[u8])) -> Result<Manifest> {
        self.inner.manifest_from(id, base)
    }

    fn fetch(&self, ids: &[Id], sink: &BlobSinkFn, progress: &dyn Progress) -> Result<u64> {
        self.inner.fetch(ids, sink, progress)
    }

    fn report(&self, report: &NodeReport) -> Result<()> {
        self.inner.report(report)
    }

    fn signatures(&self, image: &str, number: u32) -> Result<Option<Vec<u8>>> {
        self.inner.signatures(image, number)
    }

    fn public_file(&self, rel: &str) -> Result<Vec<u8>> {
        self.inner.public_file(rel)
    }

    fn bytes_received(&self) -> u64 {
        self.inner.bytes_received()
    }

    fn fetch_deltas(
        &self,
        wants: &[(Want, u32)],
        sink: &DeltaSinkFn,
        progress: &dyn Progress,
    ) -> Result<u64> {
        self.inner.fetch_deltas(wants, sink, progress)
    }
}
