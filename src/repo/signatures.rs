//! A repository's revision signatures: `public/sigs/IMAGE/N`, one file per revision holding a
//! block per signer ([`crate::format::signature`]).
//!
//! Unlike the other published files these are not derived from the catalog: a signature is
//! made with a private key the repository never holds, so the file is the only copy (a pull
//! copies it, a backup of `public/` keeps it). They lie in `public/` because nodes reading the
//! repository over HTTP, and pulls, must see them. Writing one is an atomic replace under the
//! repository's exclusive lock; a killed `sign` leaves the old file or the new one.

use std::fs;

use serde::Serialize;

use crate::catalog::Revision;
use crate::error::{corrupt, IoContext, Result};
use crate::format::signature::{
    self, Signature, SignedRevision, SignedTemplate, TemplateSet, TemplateSetSignature,
    TemplateSignature, TEMPLATE_SET_PATH,
};
use crate::format::Id;
use crate::repo::Repository;
use crate::store;
use crate::trust::{self, Checked, SigningKey, Standing, TrustedKeys, Wanted};

/// What a signature must name to stand for `rev`.
pub fn wanted(rev: &Revision) -> Wanted<'_> {
    Wanted {
        image: &rev.image,
        number: rev.number,
        id: rev.id,
        parent: rev.parent,
        created: Some(rev.created),
    }
}

/// Reads a signatures file's bytes (`what` names it in the error).
pub fn decode(data: &[u8], what: &str) -> Result<Vec<Signature>> {
    signature::decode(data).map_err(|p| {
        corrupt(format!(
            "{what}: {p}; sign the revision again (`aurum sign`), which rewrites the file"
        ))
    })
}

impl Repository {
    /// The signatures of `image@number` (none when it was never signed).
    pub fn signatures(&self, image: &str, number: u32) -> Result<Vec<Signature>> {
        let path = store::published(&self.root).join(signature::path(image, number));
        match fs::read(&path) {
            Ok(data) => decode(&data, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).at(&path),
        }
    }

    /// Every signature of `rev`, checked against it and `keys`.
    pub fn signers(&self, rev: &Revision, keys: &TrustedKeys) -> Result<Vec<Checked>> {
        let sigs = self.signatures(&rev.image, rev.number)?;
        Ok(trust::check_all(&sigs, &wanted(rev), keys))
    }

    /// Signs `rev` with `key`, now: the key's earlier signature of it is replaced (re-signing
    /// refreshes the signing time, which nodes with `max-age` look at), others are kept.
    /// Needs the repository locked exclusively.
    pub fn sign(&self, rev: &Revision, key: &SigningKey) -> Result<Signature> {
        let signed = SignedRevision {
            image: rev.image.clone(),
            number: rev.number,
            manifest: rev.id,
            parent: rev.parent,
            created: rev.created,
            signed: now(),
        };
        let sig = key.sign(signed)?;
        let mine = key.fingerprint();
        let mut sigs: Vec<Signature> = self
            .signatures(&rev.image, rev.number)?
            .into_iter()
            .filter(|s| trust::key_of(s).as_deref() != Some(mine.as_str()))
            .collect();
        sigs.push(sig.clone());
        self.write_signatures(&rev.image, rev.number, &sigs)?;
        Ok(sig)
    }

    /// Writes the signatures file of `image@number` as given (a pull copies it this way).
    pub fn write_signatures(&self, image: &str, number: u32, sigs: &[Signature]) -> Result<()> {
        let path = store::published(&self.root).join(signature::path(image, number));
        if let Some(dir) = path.parent() {
            store::create_public_dir(&self.root, dir)?;
        }
        store::write_atomic(&self.root, &path, &signature::encode(sigs))
    }

    /// The signatures of `class`'s template whose text has id `text` (none when unsigned).
    pub fn template_signatures(&self, class: &str, text: &Id) -> Result<Vec<TemplateSignature>> {
        let path = store::published(&self.root).join(signature::template_path(class, text));
        match fs::read(&path) {
            Ok(data) => signature::decode::<TemplateSignature>(&data).map_err(|p| {
                corrupt(format!(
                    "{}: {p}; sign the template again (`aurum template sign {class}`), which \
                     rewrites the file",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).at(&path),
        }
    }

    /// Signs `class`'s template `text` with `key`, now (the key's earlier signature of the
    /// same text is replaced, others kept). Needs the repository locked exclusively.
    pub fn sign_template(
        &self,
        class: &str,
        text: &str,
        key: &SigningKey,
    ) -> Result<TemplateSignature> {
        let id = Id::of(text.as_bytes());
        let sig = key.sign_template(SignedTemplate {
            class: class.to_string(),
            text: id,
            signed: now(),
        })?;
        let mine = key.fingerprint();
        let mut sigs: Vec<TemplateSignature> = self
            .template_signatures(class, &id)?
            .into_iter()
            .filter(|s| trust::template_key_of(s).as_deref() != Some(mine.as_str()))
            .collect();
        sigs.push(sig.clone());
        self.write_template_signatures(class, &id, &sigs)?;
        Ok(sig)
    }

    /// Writes the signatures file of `class`'s template `text` as given (a pull copies it).
    pub fn write_template_signatures(
        &self,
        class: &str,
        text: &Id,
        sigs: &[TemplateSignature],
    ) -> Result<()> {
        let path = store::published(&self.root).join(signature::template_path(class, text));
        if let Some(dir) = path.parent() {
            store::create_public_dir(&self.root, dir)?;
        }
        store::write_atomic(&self.root, &path, &signature::encode(sigs))
    }

    /// The blocks of the template set file (none when no set was ever signed).
    pub fn template_set(&self) -> Result<Vec<TemplateSetSignature>> {
        let path = store::published(&self.root).join(TEMPLATE_SET_PATH);
        match fs::read(&path) {
            Ok(data) => signature::decode::<TemplateSetSignature>(&data).map_err(|p| {
                corrupt(format!(
                    "{}: {p}; sign the templates again (`aurum template sign --sign-key KEY`), \
                     which rewrites the file",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).at(&path),
        }
    }

    /// What a template set signed now would name: the newest text of every class.
    pub fn current_template_set(&self) -> Result<TemplateSet> {
        let mut classes: Vec<(String, Id)> = self
            .catalog
            .templates()?
            .iter()
            .map(|v| (v.class.to_string(), Id::of(v.text.as_bytes())))
            .collect();
        classes.sort();
        Ok(TemplateSet {
            signed: now(),
            classes,
        })
    }

    /// Signs the template set (every class's newest text) with `key`, now: the key's earlier
    /// block is replaced, other keys' are kept. Needs the repository locked exclusively.
    pub fn sign_template_set(&self, key: &SigningKey) -> Result<TemplateSetSignature> {
        let sig = key.sign_template_set(self.current_template_set()?)?;
        let mine = key.fingerprint();
        // A set file that does not read is replaced (its error says to sign again, and this is
        // that), loudly: the other keys' blocks in it are lost and must be signed again. A
        // file that cannot be read at all stops here.
        let held = match self.template_set() {
            Ok(sigs) => sigs,
            Err(crate::Error::Corrupt(why)) => {
                log::warn!(
                    target: crate::progress::NOTICE,
                    "{why}; writing it again with {mine}'s block alone: other keys must sign again"
                );
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let mut sigs: Vec<TemplateSetSignature> = held
            .into_iter()
            .filter(|s| trust::template_set_key_of(s).as_deref() != Some(mine.as_str()))
            .collect();
        sigs.push(sig.clone());
        self.write_template_set(&sigs)?;
        Ok(sig)
    }

    /// Writes the template set file as given (a pull copies it this way).
    pub fn write_template_set(&self, sigs: &[TemplateSetSignature]) -> Result<()> {
        let path = store::published(&self.root).join(TEMPLATE_SET_PATH);
        if let Some(dir) = path.parent() {
            store::create_public_dir(&self.root, dir)?;
        }
        store::write_atomic(&self.root, &path, &signature::encode(sigs))
    }

    /// Removes the signatures of an image that is gone.
    pub fn remove_signatures(&self, image: &str) -> Result<()> {
        let dir = store::published(&self.root).join("sigs").join(image);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(&dir),
            _ => Ok(()),
        }
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What `verify` found of the signatures.
#[derive(Debug, Default, Serialize)]
pub struct SignatureSummary {
    /// Revisions with at least one sound signature by a trusted key (by any key, when the
    /// repository trusts none).
    pub signed: u64,
    /// Revisions with no signature.
    pub unsigned: Vec<String>,
    /// Revisions whose signatures are all sound but by keys not trusted (or revoked), when
    /// `trusted-keys` is set.
    pub untrusted: Vec<String>,
    /// Signatures that do not check out: (revision, or `template CLASS`, key, problem).
    pub bad: Vec<(String, String, String)>,
    /// Classes whose newest template has a sound signature by a trusted key (by any key,
    /// when the repository trusts none).
    pub templates_signed: u64,
    /// Classes whose newest template has no such signature.
    pub templates_unsigned: Vec<String>,
    /// The template set that counts (the newest sound one, by a trusted key when keys are
    /// set); none when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_set: Option<SetStatus>,
    /// Revisions whose network-root image (`export --netroot`) has a sound signature by a
    /// trusted key (by any key, when the repository trusts none).
    pub netroot_signed: u64,
    /// Revisions whose network-root image has no such signature.
    pub netroot_unsigned: Vec<String>,
}

/// What `verify` counts by its signatures besides revisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// A class's newest template.
    Template,
    /// A revision's network-root image.
    Netroot,
}

impl SignatureSummary {
    /// Counts `name`, a `kind`, by its signatures `checked` ([`Self::tally`], `what` naming it
    /// there), or notes the error reading them as bad.
    pub fn count(
        &mut self,
        kind: Counted,
        name: String,
        what: String,
        checked: Result<Vec<Checked>>,
        keys: &TrustedKeys,
    ) {
        let checked = match checked {
            Ok(c) => c,
            Err(e) => return self.bad.push((what, String::new(), e.to_string())),
        };
        let good = self.tally(what, &checked, keys);
        let (signed, unsigned) = match kind {
            Counted::Template => (&mut self.templates_signed, &mut self.templates_unsigned),
            Counted::Netroot => (&mut self.netroot_signed, &mut self.netroot_unsigned),
        };
        match good {
            true => *signed += 1,
            false => unsigned.push(name),
        }
    }

    /// Notes the bad signatures among `checked` (those of `what`) and says whether one is
    /// good: sound and by a trusted key, or sound by any key when none is trusted.
    pub fn tally(&mut self, what: String, checked: &[Checked], keys: &TrustedKeys) -> bool {
        for c in checked.iter().filter(|c| c.standing == Standing::Bad) {
            self.bad.push((
                what.clone(),
                c.key.clone(),
                c.problem.clone().unwrap_or_default(),
            ));
        }
        checked.iter().any(|c| match keys.is_empty() {
            true => c.standing != Standing::Bad,
            false => c.standing == Standing::Trusted,
        })
    }
}

/// The template set `verify` found.
#[derive(Debug, Serialize)]
pub struct SetStatus {
    pub key: String,
    pub signer: Option<String>,
    pub signed: i64,
    pub classes: usize,
    /// How it differs from the catalog's newest templates (`compute: a newer text was
    /// imported since`): installers that check signatures refuse those classes until it is
    /// signed again.
    pub differs: Vec<String>,
}

/// How `set` differs from the texts `current` names (both sorted by class): empty when it
/// names exactly them.
pub fn set_differences(set: &TemplateSet, current: &TemplateSet) -> Vec<String> {
    let mut out = Vec::new();
    for (class, id) in &current.classes {
        match set.text_of(class) {
            None => out.push(format!("{class}: not in the set")),
            Some(t) if t != id => out.push(format!(
                "{class}: the set names text {}, the newest is {}",
                t.short(),
                id.short()
            )),
            Some(_) => {}
        }
    }
    for (class, _) in &set.classes {
        if current.text_of(class).is_none() {
            out.push(format!("{class}: in the set, but no such class here"));
        }
    }
    out
}

/// Checks the signatures of every class's newest template (what installers are handed) into
/// `s`.
pub fn check_templates(
    repo: &Repository,
    keys: &TrustedKeys,
    s: &mut SignatureSummary,
) -> Result<()> {
    for v in repo.catalog.templates()? {
        let id = Id::of(v.text.as_bytes());
        let checked = repo
            .template_signatures(v.class.as_str(), &id)
            .map(|sigs| trust::check_template(&sigs, v.class.as_str(), &id, keys));
        let what = format!("template {}", v.class);
        s.count(Counted::Template, v.class.to_string(), what, checked, keys);
    }
    Ok(())
}

/// Checks the template set's blocks into `s`: a bad block is damage; the set that counts is
/// compared with the catalog's newest templates. Only where templates are signed at all.
pub fn check_template_set(
    repo: &Repository,
    keys: &TrustedKeys,
    s: &mut SignatureSummary,
) -> Result<()> {
    let sigs = match repo.template_set() {
        Ok(sigs) => sigs,
        Err(e) => {
            s.bad
                .push(("template set".into(), String::new(), e.to_string()));
            return Ok(());
        }
    };
    let checked = trust::check_template_set(&sigs, keys);
    for c in checked.iter().filter(|c| c.standing == Standing::Bad) {
        s.bad.push((
            "template set".into(),
            c.key.clone(),
            c.problem.clone().unwrap_or_default(),
        ));
    }
    let counts = |c: &Checked| match keys.is_empty() {
        true => c.standing != Standing::Bad,
        false => c.standing == Standing::Trusted,
    };
    let newest = checked
        .iter()
        .enumerate()
        .filter(|(_, c)| counts(c))
        .max_by_key(|(_, c)| c.signed);
    if let Some((i, c)) = newest {
        let current = repo.current_template_set()?;
        s.template_set = Some(SetStatus {
            key: c.key.clone(),
            signer: c.signer.clone(),
            signed: c.signed,
            classes: sigs[i].set.classes.len(),
            differs: set_differences(&sigs[i].set, &current),
        });
    }
    Ok(())
}

/// Checks every signature of `revisions`.
pub fn check(
    repo: &Repository,
    revisions: &[Revision],
    keys: &TrustedKeys,
) -> Result<SignatureSummary> {
    let mut s = SignatureSummary::default();
    for rev in revisions {
        let checked = match repo.signatures(&rev.image, rev.number) {
            Ok(sigs) => trust::check_all(&sigs, &wanted(rev), keys),
            Err(e) => {
                s.bad.push((rev.name(), String::new(), e.to_string()));
                continue;
            }
        };
        if checked.is_empty() {
            s.unsigned.push(rev.name());
            continue;
        }
        for c in checked.iter().filter(|c| c.standing == Standing::Bad) {
            s.bad.push((
                rev.name(),
                c.key.clone(),
                c.problem.clone().unwrap_or_default(),
            ));
        }
        let good = |c: &&Checked| match keys.is_empty() {
            true => c.standing != Standing::Bad,
            false => c.standing == Standing::Trusted,
        };
        if checked.iter().any(|c| good(&c)) {
            s.signed += 1;
        } else if checked.iter().any(|c| c.standing != Standing::Bad) {
            s.untrusted.push(rev.name());
        }
    }
    Ok(s)
}
