//! Keys, signing and checking signatures of revisions.
//!
//! A golden image is root on every node, so a node must know that the revision it is about to
//! write is one an administrator made. Revisions are signed with ed25519 keys in OpenSSH's own
//! formats (a key made by `aurum key generate` or by `ssh-keygen -t ed25519`; signatures in the
//! SSHSIG format `ssh-keygen -Y sign` and `git` use), so administrators use keys and tools they
//! already trust, and `ssh-keygen -Y verify` can check a signature without aurum. We use the
//! `ssh-key` crate (RustCrypto) rather than running `ssh-keygen`: a node checks signatures in
//! the installer too, where ssh-keygen may not be.
//!
//! What is signed is [`SignedRevision`] (its layout is in [`crate::format::signature`]). Who is
//! trusted is [`TrustedKeys`]: public keys, and revoked keys that no longer count even when
//! listed as trusted (a stolen key). [`accept`] is the one decision a node, a pull and
//! `verify` share: a revision passes when a trusted, unrevoked key signed exactly it.

use std::fmt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use crate::error::{invalid, Error, IoContext, Result};
use crate::format::signature::{
    NetrootSignature, Signature, SignedNetroot, SignedRevision, SignedTemplate, TemplateSet,
    TemplateSetSignature, TemplateSignature, NAMESPACE, NETROOT_NAMESPACE, TEMPLATE_NAMESPACE,
    TEMPLATE_SET_NAMESPACE,
};
use crate::format::Id;

/// The environment variable naming the signing key (over nothing: a command signs only when
/// given `--sign-key` or this).
pub const KEY_ENV: &str = "AURUM_SIGN_KEY";

/// A private key that signs revisions.
pub struct SigningKey {
    key: PrivateKey,
    path: PathBuf,
}

impl SigningKey {
    /// Reads an OpenSSH private key file (`aurum key generate`'s, or `ssh-keygen -t ed25519`'s).
    pub fn load(path: &Path) -> Result<SigningKey> {
        let text = std::fs::read_to_string(path).at(path)?;
        let key = PrivateKey::from_openssh(&text).map_err(|e| {
            invalid(format!(
                "{}: not an OpenSSH private key ({e}); give the private key file (not the .pub), \
                 made by `aurum key generate` or `ssh-keygen -t ed25519`",
                path.display()
            ))
        })?;
        if key.is_encrypted() {
            return Err(invalid(format!(
                "{}: the key is protected by a passphrase, which aurum cannot ask for; sign with \
                 a key kept for aurum (`aurum key generate`, readable by root only), or remove \
                 the passphrase of a copy with `ssh-keygen -p -f COPY`",
                path.display()
            )));
        }
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(invalid(format!(
                "{}: a {} key; aurum signs with ed25519 keys only (`aurum key generate`, or \
                 `ssh-keygen -t ed25519`)",
                path.display(),
                key.algorithm()
            )));
        }
        Ok(SigningKey {
            key,
            path: path.to_path_buf(),
        })
    }

    /// Makes a new ed25519 key: the private key at `path` (mode 0600) and the public key at
    /// `path.pub`, as ssh-keygen lays them out. Refuses to overwrite either.
    pub fn generate(path: &Path, comment: &str) -> Result<SigningKey> {
        let public_path = public_path(path);
        for p in [path, public_path.as_path()] {
            if p.exists() {
                return Err(invalid(format!(
                    "{} exists; aurum never overwrites a key: choose another file, or remove \
                     the old key once nothing needs it (see the book's Security chapter on \
                     rotating keys)",
                    p.display()
                )));
            }
        }
        let mut key = PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519)
            .map_err(|e| Error::Tool(format!("cannot make a key: {e}")))?;
        key.set_comment(comment);
        let private = key
            .to_openssh(LineEnding::LF)
            .map_err(|e| Error::Tool(format!("cannot encode the key: {e}")))?;
        write_new(path, private.as_bytes(), 0o600)?;
        let public = format!("{}\n", public_line(key.public_key()));
        write_new(&public_path, public.as_bytes(), 0o644)?;
        Ok(SigningKey {
            key,
            path: path.to_path_buf(),
        })
    }

    /// The key's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public key as one OpenSSH line (`ssh-ed25519 AAAA... comment`), for node.toml.
    pub fn public_line(&self) -> String {
        public_line(self.key.public_key())
    }

    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The armored SSH signature of `message` in `namespace`.
    fn armor(&self, namespace: &str, message: &[u8]) -> Result<String> {
        let sig = self
            .key
            .sign(namespace, HashAlg::Sha512, message)
            .map_err(|e| Error::Tool(format!("signing failed: {e}")))?;
        sig.to_pem(LineEnding::LF)
            .map_err(|e| Error::Tool(format!("cannot encode a signature: {e}")))
    }

    /// Signs `revision`.
    pub fn sign(&self, revision: SignedRevision) -> Result<Signature> {
        let armored = self.armor(NAMESPACE, &revision.message())?;
        Ok(Signature { revision, armored })
    }

    /// Signs a template's text.
    pub fn sign_template(&self, template: SignedTemplate) -> Result<TemplateSignature> {
        let armored = self.armor(TEMPLATE_NAMESPACE, &template.message())?;
        Ok(TemplateSignature { template, armored })
    }

    /// Signs a template set.
    pub fn sign_template_set(&self, set: TemplateSet) -> Result<TemplateSetSignature> {
        let armored = self.armor(TEMPLATE_SET_NAMESPACE, &set.message())?;
        Ok(TemplateSetSignature { set, armored })
    }

    /// Signs a network-root image of a revision.
    pub fn sign_netroot(&self, netroot: SignedNetroot) -> Result<NetrootSignature> {
        let armored = self.armor(NETROOT_NAMESPACE, &netroot.message())?;
        Ok(NetrootSignature { netroot, armored })
    }
}

/// `KEY.pub` beside `KEY`.
pub fn public_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

fn public_line(key: &PublicKey) -> String {
    // Encoding a key we hold cannot fail; an empty line would be refused by any reader.
    key.to_openssh().unwrap_or_default()
}

/// Creates `path` (never replacing a file) with `data` and `mode`, synced.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .at(path)?;
    f.write_all(data).at(path)?;
    f.sync_all().at(path)
}

/// The keys a node (or a repository's `verify` and `pull`) trusts, and those it no longer
/// does.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    trusted: Vec<PublicKey>,
    revoked: Vec<String>,
}

impl TrustedKeys {
    /// Reads the `trusted-keys` and `revoked-keys` settings. Each entry is an OpenSSH public
    /// key line (`ssh-ed25519 AAAA... comment`), or the absolute path of a file of such lines
    /// (`#` comments and empty lines skipped, as in authorized_keys); a revoked entry may also
    /// be a fingerprint (`SHA256:...`).
    pub fn parse(trusted: &[String], revoked: &[String]) -> Result<TrustedKeys> {
        let mut keys = TrustedKeys::default();
        for line in expand(trusted)? {
            keys.trusted.push(parse_key(&line)?);
        }
        for line in expand(revoked)? {
            keys.revoked.push(if line.starts_with("SHA256:") {
                line
            } else {
                parse_key(&line)?.fingerprint(HashAlg::Sha256).to_string()
            });
        }
        Ok(keys)
    }

    /// No trusted key: nothing is checked.
    pub fn is_empty(&self) -> bool {
        self.trusted.is_empty()
    }

    /// How many keys are trusted (and not revoked).
    pub fn count(&self) -> usize {
        self.trusted
            .iter()
            .filter(|k| !self.is_revoked(&fingerprint(k.key_data())))
            .count()
    }

    fn is_revoked(&self, fp: &str) -> bool {
        self.revoked.iter().any(|r| r == fp)
    }

    /// The trusted key with this fingerprint.
    fn trusted(&self, fp: &str) -> Option<&PublicKey> {
        self.trusted
            .iter()
            .find(|k| fingerprint(k.key_data()) == fp)
    }
}

/// The public key lines `entries` name (lines, or absolute paths of files of them), each
/// checked, for a place where the files will not be (a boot kit).
pub fn key_lines(entries: &[String]) -> Result<Vec<String>> {
    let lines = expand(entries)?;
    for l in &lines {
        parse_key(l)?;
    }
    Ok(lines)
}

/// Entries that name files replaced by the files' lines.
fn expand(entries: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in entries {
        let e = e.trim();
        if !e.starts_with('/') {
            out.push(e.to_string());
            continue;
        }
        let text = std::fs::read_to_string(e).at(e)?;
        out.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    Ok(out)
}

fn parse_key(line: &str) -> Result<PublicKey> {
    PublicKey::from_openssh(line).map_err(|e| {
        invalid(format!(
            "`{line}` is not an OpenSSH public key ({e}): give the line of the key's .pub file \
             (`ssh-ed25519 AAAA... comment`), or the absolute path of a file of such lines"
        ))
    })
}

fn fingerprint(key: &ssh_key::public::KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The fingerprint of the key a signature says made it (`None` when it does not decode).
pub fn key_of(s: &Signature) -> Option<String> {
    SshSig::from_pem(&s.armored)
        .ok()
        .map(|sig| fingerprint(sig.public_key()))
}

/// The fingerprint of the key a template's signature says made it.
pub fn template_key_of(s: &TemplateSignature) -> Option<String> {
    SshSig::from_pem(&s.armored)
        .ok()
        .map(|sig| fingerprint(sig.public_key()))
}

/// The fingerprint of the key a template set's signature says made it.
pub fn template_set_key_of(s: &TemplateSetSignature) -> Option<String> {
    SshSig::from_pem(&s.armored)
        .ok()
        .map(|sig| fingerprint(sig.public_key()))
}

/// The fingerprint of the key a network-root image's signature says made it.
pub fn netroot_key_of(s: &NetrootSignature) -> Option<String> {
    SshSig::from_pem(&s.armored)
        .ok()
        .map(|sig| fingerprint(sig.public_key()))
}

/// Whether a signature made for image `signed` may stand for the image named `local` here: the
/// same name, or a pulled copy of it (`REMOTE/IMAGE`; pulls keep the source's numbers and ids).
pub fn image_matches(signed: &str, local: &str) -> bool {
    signed == local
        || local
            .split_once('/')
            .is_some_and(|(_, rest)| rest == signed)
}

/// What one signature is worth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Standing {
    /// Made by a trusted key, over this revision.
    Trusted,
    /// Sound, and no key is configured to judge it by (a repository without `trusted-keys`).
    Valid,
    /// Sound, but by a key that is not trusted.
    Untrusted,
    /// Sound, by a key that was revoked.
    Revoked,
    /// The signature does not check out, or it names another revision: the revision or its
    /// signature was altered.
    Bad,
}

impl fmt::Display for Standing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Standing::Trusted => "trusted",
            Standing::Valid => "valid",
            Standing::Untrusted => "untrusted",
            Standing::Revoked => "REVOKED",
            Standing::Bad => "BAD",
        })
    }
}

/// One signature, checked.
#[derive(Clone, Debug, Serialize)]
pub struct Checked {
    /// `SHA256:...` of the key that made it (as the signature says: for a bad one, a claim).
    pub key: String,
    /// The trusted key's comment (`admin@master`), when it is trusted.
    pub signer: Option<String>,
    /// Seconds since the epoch.
    pub signed: i64,
    pub standing: Standing,
    /// Why a bad signature is bad.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The revision a signature must name.
#[derive(Clone, Debug)]
pub struct Wanted<'a> {
    /// The image's name here.
    pub image: &'a str,
    pub number: u32,
    pub id: Id,
    pub parent: Option<Id>,
    pub created: Option<i64>,
}

/// Checks every signature of `sigs` against the revision `want` and the keys `keys`.
pub fn check_all(sigs: &[Signature], want: &Wanted, keys: &TrustedKeys) -> Vec<Checked> {
    sigs.iter().map(|s| check_one(s, want, keys)).collect()
}

fn check_one(s: &Signature, want: &Wanted, keys: &TrustedKeys) -> Checked {
    let r = &s.revision;
    let mut differs = Vec::new();
    if !image_matches(&r.image, want.image) {
        differs.push(format!("image `{}`", r.image));
    }
    if r.number != want.number {
        differs.push(format!("number {}", r.number));
    }
    if r.manifest != want.id {
        differs.push(format!("manifest {}", r.manifest.short()));
    }
    if want.created.is_some_and(|c| c != r.created) {
        differs.push(format!("creation time {}", r.created));
    }
    if want.created.is_some() && r.parent != want.parent {
        differs.push("another parent".to_string());
    }
    verdict(&s.armored, NAMESPACE, &r.message(), differs, r.signed, keys)
}

/// Checks one armored signature over `message` in `namespace`; `differs` says how the
/// signed text differs from what it must name (empty: it names exactly that).
fn verdict(
    armored: &str,
    namespace: &str,
    message: &[u8],
    differs: Vec<String>,
    signed: i64,
    keys: &TrustedKeys,
) -> Checked {
    let bad = |key: String, problem: String| Checked {
        key,
        signer: None,
        signed,
        standing: Standing::Bad,
        problem: Some(problem),
    };
    let sig: SshSig = match SshSig::from_pem(armored) {
        Ok(sig) => sig,
        Err(e) => {
            return bad(
                String::new(),
                format!("the signature does not decode ({e})"),
            )
        }
    };
    let key = fingerprint(sig.public_key());
    if sig.namespace() != namespace {
        return bad(
            key,
            format!("made for `{}`, not for `{namespace}`", sig.namespace()),
        );
    }
    let public = PublicKey::new(sig.public_key().clone(), "");
    if let Err(e) = public.verify(namespace, message, &sig) {
        return bad(key, format!("it does not match the text it signs ({e})"));
    }
    if !differs.is_empty() {
        return bad(
            key,
            format!(
                "it was made for another {} ({})",
                match namespace {
                    TEMPLATE_NAMESPACE => "template",
                    TEMPLATE_SET_NAMESPACE => "template set",
                    NETROOT_NAMESPACE => "network-root image",
                    _ => "revision",
                },
                differs.join(", ")
            ),
        );
    }
    let (standing, signer) = if keys.is_revoked(&key) {
        (Standing::Revoked, None)
    } else if let Some(k) = keys.trusted(&key) {
        (Standing::Trusted, Some(k.comment().to_string()))
    } else if keys.is_empty() {
        (Standing::Valid, None)
    } else {
        (Standing::Untrusted, None)
    };
    Checked {
        key,
        signer,
        signed,
        standing,
        problem: None,
    }
}

/// Every signature of `class`'s template whose text has id `text`, checked.
pub fn check_template(
    sigs: &[TemplateSignature],
    class: &str,
    text: &Id,
    keys: &TrustedKeys,
) -> Vec<Checked> {
    sigs.iter()
        .map(|s| {
            let t = &s.template;
            let mut differs = Vec::new();
            if t.class != class {
                differs.push(format!("class `{}`", t.class));
            }
            if t.text != *text {
                differs.push(format!("text {}", t.text.short()));
            }
            verdict(
                &s.armored,
                TEMPLATE_NAMESPACE,
                &t.message(),
                differs,
                t.signed,
                keys,
            )
        })
        .collect()
}

/// The decision for a template: `Ok` with its newest trusted signature, else why not.
pub fn accept_template(
    sigs: &[TemplateSignature],
    class: &str,
    text: &Id,
    keys: &TrustedKeys,
) -> std::result::Result<Accepted, Refusal> {
    if sigs.is_empty() {
        return Err(Refusal::Unsigned);
    }
    let checked = check_template(sigs, class, text, keys);
    decide(&checked).map(|i| Accepted {
        key: checked[i].key.clone(),
        signer: checked[i].signer.clone(),
        signed: checked[i].signed,
        created: checked[i].signed,
    })
}

/// Every block of a template set file, checked (a set names no one thing to compare with:
/// what it names is checked by [`accept_template_set`]'s caller).
pub fn check_template_set(sigs: &[TemplateSetSignature], keys: &TrustedKeys) -> Vec<Checked> {
    sigs.iter()
        .map(|s| {
            verdict(
                &s.armored,
                TEMPLATE_SET_NAMESPACE,
                &s.set.message(),
                Vec::new(),
                s.set.signed,
                keys,
            )
        })
        .collect()
}

/// The network-root image a signature must name: revision `image@number` (`id`) as the file
/// whose BLAKE3 is `file`, of `bytes` bytes.
#[derive(Clone, Debug)]
pub struct WantedNetroot<'a> {
    /// The image's name here.
    pub image: &'a str,
    pub number: u32,
    pub id: Id,
    pub file: Id,
    pub bytes: u64,
}

/// Every signature of a network-root image, checked against what it must name.
pub fn check_netroot(
    sigs: &[NetrootSignature],
    want: &WantedNetroot,
    keys: &TrustedKeys,
) -> Vec<Checked> {
    sigs.iter()
        .map(|s| {
            let n = &s.netroot;
            let mut differs = Vec::new();
            if !image_matches(&n.image, want.image) {
                differs.push(format!("image `{}`", n.image));
            }
            if n.number != want.number {
                differs.push(format!("number {}", n.number));
            }
            if n.manifest != want.id {
                differs.push(format!("manifest {}", n.manifest.short()));
            }
            if n.file != want.file {
                differs.push(format!("file BLAKE3 {}", n.file.short()));
            }
            if n.bytes != want.bytes {
                differs.push(format!("{} bytes", n.bytes));
            }
            verdict(
                &s.armored,
                NETROOT_NAMESPACE,
                &n.message(),
                differs,
                n.signed,
                keys,
            )
        })
        .collect()
}

/// The template set that counts: the newest block a trusted key signed (its index, and the
/// signature), else why none does. A block that does not check out is passed over when a
/// sound trusted one is there, as for revisions.
pub fn accept_template_set(
    sigs: &[TemplateSetSignature],
    keys: &TrustedKeys,
) -> std::result::Result<(usize, Accepted), Refusal> {
    if sigs.is_empty() {
        return Err(Refusal::Unsigned);
    }
    let checked = check_template_set(sigs, keys);
    decide(&checked).map(|i| {
        (
            i,
            Accepted {
                key: checked[i].key.clone(),
                signer: checked[i].signer.clone(),
                signed: checked[i].signed,
                created: checked[i].signed,
            },
        )
    })
}

/// The decision for a network-root image: `Ok` with its newest trusted signature, else why
/// not.
pub fn accept_netroot(
    sigs: &[NetrootSignature],
    want: &WantedNetroot,
    keys: &TrustedKeys,
) -> std::result::Result<Accepted, Refusal> {
    if sigs.is_empty() {
        return Err(Refusal::Unsigned);
    }
    let checked = check_netroot(sigs, want, keys);
    decide(&checked).map(|i| Accepted {
        key: checked[i].key.clone(),
        signer: checked[i].signer.clone(),
        signed: checked[i].signed,
        created: checked[i].signed,
    })
}

/// Why a revision is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No signature at all.
    Unsigned,
    /// Sound signatures, none by a trusted key (their keys' fingerprints).
    Untrusted(Vec<String>),
    /// Signed only by revoked keys.
    Revoked(Vec<String>),
    /// A signature that does not check out (and no good one beside it).
    Altered(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unsigned => f.write_str(
                "it has no signature; sign it on the image server with `aurum sign IMAGE@N --sign-key KEY`",
            ),
            Refusal::Untrusted(keys) => write!(
                f,
                "it is signed only by keys this node does not trust ({}); if one is an \
                 administrator's, add its public key to `trusted-keys`, else sign the revision \
                 with a trusted key",
                keys.join(", ")
            ),
            Refusal::Revoked(keys) => write!(
                f,
                "it is signed only by revoked keys ({}); sign it again with a current key \
                 (`aurum sign IMAGE@N --sign-key KEY`)",
                keys.join(", ")
            ),
            Refusal::Altered(why) => write!(
                f,
                "its signature does not check out: {why}; the revision or its signature was \
                 altered after signing (a tampered server, mirror or connection): do not use \
                 it, run `aurum verify` on the image server"
            ),
        }
    }
}

/// The trusted signature a revision passed with (the newest, when several).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Accepted {
    pub key: String,
    pub signer: Option<String>,
    pub signed: i64,
    /// The revision's creation time, as signed.
    pub created: i64,
}

/// The decision: `Ok` with the newest trusted signature over exactly `want`, else why not.
pub fn accept(
    sigs: &[Signature],
    want: &Wanted,
    keys: &TrustedKeys,
) -> std::result::Result<Accepted, Refusal> {
    if sigs.is_empty() {
        return Err(Refusal::Unsigned);
    }
    let checked = check_all(sigs, want, keys);
    decide(&checked).map(|i| Accepted {
        key: checked[i].key.clone(),
        signer: checked[i].signer.clone(),
        signed: checked[i].signed,
        created: sigs[i].revision.created,
    })
}

/// Which of `checked` a thing passes with (the newest trusted signature), else why not.
fn decide(checked: &[Checked]) -> std::result::Result<usize, Refusal> {
    if let Some((i, _)) = checked
        .iter()
        .enumerate()
        .filter(|(_, c)| c.standing == Standing::Trusted)
        .max_by_key(|(_, c)| c.signed)
    {
        return Ok(i);
    }
    let of = |st: Standing| -> Vec<String> {
        checked
            .iter()
            .filter(|c| c.standing == st)
            .map(|c| c.key.clone())
            .collect()
    };
    if let Some(bad) = checked.iter().find(|c| c.standing == Standing::Bad) {
        let who = if bad.key.is_empty() {
            String::new()
        } else {
            format!("the signature by {} ", bad.key)
        };
        return Err(Refusal::Altered(format!(
            "{who}{}",
            bad.problem.clone().unwrap_or_default()
        )));
    }
    let revoked = of(Standing::Revoked);
    if !revoked.is_empty() && of(Standing::Untrusted).is_empty() {
        return Err(Refusal::Revoked(revoked));
    }
    Err(Refusal::Untrusted(
        of(Standing::Untrusted)
            .into_iter()
            .chain(of(Standing::Valid))
            .chain(revoked)
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(number: u32) -> SignedRevision {
        SignedRevision {
            image: "compute".into(),
            number,
            manifest: Id::of(&number.to_le_bytes()),
            parent: None,
            created: 100,
            signed: 200,
        }
    }

    fn want(r: &SignedRevision) -> Wanted<'_> {
        Wanted {
            image: &r.image,
            number: r.number,
            id: r.manifest,
            parent: r.parent,
            created: Some(r.created),
        }
    }

    fn key(dir: &Path, name: &str) -> SigningKey {
        SigningKey::generate(&dir.join(name), &format!("{name}@test")).unwrap()
    }

    #[test]
    fn a_trusted_key_passes_and_everything_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (key(dir.path(), "a"), key(dir.path(), "b"));
        let trust_a = TrustedKeys::parse(&[a.public_line()], &[]).unwrap();
        let r = revision(3);
        let sig = a.sign(r.clone()).unwrap();
        let ok = accept(std::slice::from_ref(&sig), &want(&r), &trust_a).unwrap();
        assert_eq!(ok.signer.as_deref(), Some("a@test"));
        assert_eq!(ok.key, a.fingerprint());

        assert_eq!(accept(&[], &want(&r), &trust_a), Err(Refusal::Unsigned));
        let by_b = b.sign(r.clone()).unwrap();
        assert_eq!(
            accept(std::slice::from_ref(&by_b), &want(&r), &trust_a),
            Err(Refusal::Untrusted(vec![b.fingerprint()]))
        );
        // A signature over revision 3 presented for revision 4: refused as altered.
        let r4 = revision(4);
        assert!(matches!(
            accept(std::slice::from_ref(&sig), &want(&r4), &trust_a),
            Err(Refusal::Altered(_))
        ));
        // The text changed after signing.
        let mut forged = sig.clone();
        forged.revision.number = 4;
        assert!(matches!(
            accept(&[forged], &want(&r4), &trust_a),
            Err(Refusal::Altered(_))
        ));
        // Revoked wins over trusted; a path of a .pub file works as an entry.
        let a_pub = public_path(a.path()).display().to_string();
        let revoked = TrustedKeys::parse(std::slice::from_ref(&a_pub), &[a.fingerprint()]).unwrap();
        assert_eq!(revoked.count(), 0);
        assert_eq!(
            accept(std::slice::from_ref(&sig), &want(&r), &revoked),
            Err(Refusal::Revoked(vec![a.fingerprint()]))
        );
        // Rotation: both keys trusted, the newest trusted signature is the one accepted.
        let both = TrustedKeys::parse(&[a_pub, b.public_line()], &[]).unwrap();
        let mut later = r.clone();
        later.signed = 300;
        let by_b_later = b.sign(later).unwrap();
        let ok = accept(&[sig, by_b_later], &want(&r), &both).unwrap();
        assert_eq!((ok.key, ok.signed), (b.fingerprint(), 300));
    }

    #[test]
    fn a_netroot_signature_vouches_for_one_file_of_one_revision() {
        let dir = tempfile::tempdir().unwrap();
        let a = key(dir.path(), "a");
        let keys = TrustedKeys::parse(&[a.public_line()], &[]).unwrap();
        let n = SignedNetroot {
            image: "compute".into(),
            number: 3,
            manifest: Id::of(b"m"),
            file: Id::of(b"image"),
            bytes: 4096,
            signed: 50,
        };
        let want = WantedNetroot {
            image: "compute",
            number: 3,
            id: n.manifest,
            file: n.file,
            bytes: 4096,
        };
        let sig = a.sign_netroot(n.clone()).unwrap();
        let one = std::slice::from_ref(&sig);
        assert_eq!(
            accept_netroot(one, &want, &keys).unwrap().key,
            a.fingerprint()
        );
        for other in [
            WantedNetroot {
                number: 4,
                ..want.clone()
            },
            WantedNetroot {
                file: Id::of(b"forged"),
                ..want.clone()
            },
            WantedNetroot {
                bytes: 4097,
                ..want.clone()
            },
        ] {
            let e = accept_netroot(one, &other, &keys).unwrap_err();
            assert!(e.to_string().contains("another network-root image"), "{e}");
        }
        // A revision's signature over the same lines' values is not an image's.
        let mut as_revision = sig.clone();
        as_revision.armored = a.sign(revision(3)).unwrap().armored;
        assert!(matches!(
            accept_netroot(&[as_revision], &want, &keys),
            Err(Refusal::Altered(_))
        ));
        assert_eq!(accept_netroot(&[], &want, &keys), Err(Refusal::Unsigned));
    }

    #[test]
    fn pulled_copies_keep_their_signatures() {
        assert!(image_matches("compute", "compute"));
        assert!(image_matches("compute", "super/compute"));
        assert!(!image_matches("compute", "login"));
        assert!(!image_matches("compute", "computer"));
        assert!(!image_matches("super/compute", "compute"));
    }

    #[test]
    fn keys_are_never_overwritten_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path(), "k");
        assert!(SigningKey::generate(k.path(), "again").is_err());
        let loaded = SigningKey::load(k.path()).unwrap();
        assert_eq!(loaded.fingerprint(), k.fingerprint());
        let e = SigningKey::load(&public_path(k.path())).err().unwrap();
        assert!(e.to_string().contains("not the .pub"), "{e}");
        let e = TrustedKeys::parse(&["ssh-ed25519 nonsense".into()], &[])
            .err()
            .unwrap();
        assert!(e.to_string().contains("not an OpenSSH public key"), "{e}");
    }
}
