//! `key generate` and `sign` subcommands; `--sign-key`, shared by the commands that make
//! revisions; the trust settings of aurum.toml and node.toml, read for the library.

use std::path::PathBuf;

use aurum::apply::verified::Policy;
use aurum::catalog::Revision;
use aurum::repo::{Lock, Repository};
use aurum::trust::{SigningKey, TrustedKeys, KEY_ENV};
use clap::{Args, Subcommand};

use super::{human_time, print_json, say, Global};

/// The signing key of a command that makes a revision (getimage, chroot, import).
#[derive(Args)]
pub struct SignKeyArgs {
    /// Sign the new revision with this ed25519 private key (OpenSSH format: `aurum key
    /// generate`'s, or `ssh-keygen -t ed25519`'s, without a passphrase). Nodes whose node.toml
    /// lists `trusted-keys` take only revisions signed by one of them.
    #[arg(long, env = KEY_ENV, value_name = "FILE")]
    sign_key: Option<PathBuf>,
}

impl SignKeyArgs {
    /// The key, read before the command does any work (a bad key fails it at once).
    pub fn load(&self) -> anyhow::Result<Option<SigningKey>> {
        Ok(self.sign_key.as_deref().map(SigningKey::load).transpose()?)
    }

    /// The key, for a command that only signs.
    pub fn required(&self) -> anyhow::Result<SigningKey> {
        self.load()?.ok_or_else(|| {
            aurum::Error::Invalid(format!(
                "give the signing key with --sign-key FILE (or {KEY_ENV}); `aurum key generate FILE` makes one"
            ))
            .into()
        })
    }
}

/// Signs `rev` with `key` when there is one, saying so on stderr.
pub fn sign_new(repo: &Repository, rev: &Revision, key: Option<&SigningKey>) -> anyhow::Result<()> {
    if let Some(key) = key {
        repo.sign(rev, key)?;
        say!("aurum: signed {} with {}", rev.name(), key.fingerprint());
    }
    Ok(())
}

/// The keys aurum.toml trusts (for `verify`, `pull`, `log` and `show`).
pub fn server_keys(g: &Global) -> anyhow::Result<TrustedKeys> {
    let s = &g.config.server;
    Ok(TrustedKeys::parse(&s.trusted_keys, &s.revoked_keys)?)
}

/// What node.toml demands of the revisions a node takes.
pub fn node_policy(g: &Global, allow_downgrade: bool) -> anyhow::Result<Policy> {
    let n = &g.config.node;
    Ok(Policy {
        keys: TrustedKeys::parse(&n.trusted_keys, &n.revoked_keys)?,
        max_age: n
            .max_age
            .as_deref()
            .map(aurum::config::parse_age)
            .transpose()?,
        allow_downgrade,
    })
}

/// Make and show signing keys.
///
/// Revisions are signed with ed25519 keys in OpenSSH's formats, so an existing key made with
/// `ssh-keygen -t ed25519` (without a passphrase) works as well as one made here, and
/// `ssh-keygen -Y verify` can check a signature without aurum. Keep the private key on the
/// image server (or a signing host), readable by root only; give the public key (the .pub
/// file's line) to nodes in node.toml's `trusted-keys`.
#[derive(Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Subcommand)]
enum KeyCommand {
    Generate(GenerateArgs),
    Show(ShowKeyArgs),
}

/// Make a new ed25519 signing key: FILE (the private key, mode 0600) and FILE.pub.
///
/// Never overwrites a key. Prints the public key line to put in node.toml's `trusted-keys`.
#[derive(Args)]
struct GenerateArgs {
    /// Where to write the private key; the public key goes to FILE.pub.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The comment stored with the key, shown as the signer (`aurum log`): who or what
    /// signs with it. Default: root@HOSTNAME.
    #[arg(short = 'C', long, value_name = "TEXT")]
    comment: Option<String>,
    /// Print JSON: {"file", "public_file", "public_key", "fingerprint"}.
    #[arg(long)]
    json: bool,
}

/// Print a private key's public line and fingerprint (to check which key a file holds).
#[derive(Args)]
struct ShowKeyArgs {
    /// The private key file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Print JSON: {"file", "public_key", "fingerprint"}.
    #[arg(long)]
    json: bool,
}

pub fn key(_: &Global, a: KeyArgs) -> anyhow::Result<()> {
    let (key, json, made) = match a.command {
        KeyCommand::Generate(a) => {
            let comment = a
                .comment
                .unwrap_or_else(|| format!("root@{}", aurum::apply::client::hostname()));
            (SigningKey::generate(&a.file, &comment)?, a.json, true)
        }
        KeyCommand::Show(a) => (SigningKey::load(&a.file)?, a.json, false),
    };
    let public_file = aurum::trust::public_path(key.path());
    if json {
        let mut v = serde_json::json!({
            "file": key.path(),
            "public_key": key.public_line(),
            "fingerprint": key.fingerprint(),
        });
        if made {
            v["public_file"] = serde_json::json!(public_file);
        }
        return print_json(&v);
    }
    if made {
        say!(
            "aurum: wrote {} (private, keep it secret) and {}; add this line to node.toml's trusted-keys:",
            key.path().display(),
            public_file.display()
        );
    }
    println!("{}", key.public_line());
    say!("fingerprint {}", key.fingerprint());
    Ok(())
}

/// Sign existing revisions.
///
/// Each REV is IMAGE@N, IMAGE:TAG or IMAGE (its newest revision); with --all, every revision
/// of the images named (or of every image when none is). Signing again with the same key
/// replaces that key's earlier signature (so the signing time is new: run it from cron on
/// the heads when nodes set `max-age`); other keys' signatures are kept. After a key
/// rotation, `aurum sign --all --sign-key NEW` signs everything with the new key: --all
/// with no image named also signs every class's newest partition template and the
/// template set, as `aurum template sign` does.
/// A revision published as a network-root image (`aurum export REV --netroot`) has its
/// image signed too.
#[derive(Args)]
pub struct SignArgs {
    /// The revisions (IMAGE, IMAGE@N, IMAGE:TAG).
    #[arg(value_name = "REV")]
    revs: Vec<String>,
    /// Every revision of the images named, or of every image when none is (and then the
    /// partition templates and the template set too).
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    key: SignKeyArgs,
    /// Print JSON: a list of {"revision", "image", "number", "id", "key", "signed",
    /// "netroot" (the network-root image signed, or null)}; with
    /// --all and no image, also {"template", "version", "text", "key", "signed"} per class
    /// and {"template_set" (how many classes), "key", "signed"}.
    #[arg(long)]
    json: bool,
}

pub fn sign(g: &Global, a: SignArgs) -> anyhow::Result<()> {
    let key = a.key.required()?;
    if a.revs.is_empty() && !a.all {
        return Err(aurum::Error::Invalid(
            "name the revisions to sign (IMAGE, IMAGE@N, IMAGE:TAG), or give --all".into(),
        )
        .into());
    }
    let repo = Repository::open(&g.repo, Lock::Exclusive)?;
    let revs: Vec<Revision> = if a.all {
        let images = match a.revs.is_empty() {
            true => repo.catalog.images()?.into_iter().map(|i| i.name).collect(),
            false => a.revs.clone(),
        };
        let mut all = Vec::new();
        for image in images {
            repo.require_image(&image)?;
            all.extend(repo.catalog.revisions(&image)?);
        }
        all
    } else {
        a.revs
            .iter()
            .map(|r| repo.resolve(r))
            .collect::<aurum::Result<_>>()?
    };
    let mut out = Vec::new();
    for rev in &revs {
        let sig = repo.sign(rev, &key)?;
        let netroot = repo.sign_netroot(rev, &key)?;
        let mut v = super::revision_json(rev);
        v["key"] = key.fingerprint().into();
        v["signed"] = sig.revision.signed.into();
        v["netroot"] = serde_json::json!(netroot.as_ref().map(|(info, _)| &info.path));
        out.push(v);
        if !a.json {
            println!(
                "signed {} {} with {} at {} UTC",
                rev.name(),
                rev.id.short(),
                key.fingerprint(),
                human_time(sig.revision.signed)
            );
            if let Some((info, _)) = &netroot {
                println!("signed {}'s network-root image {}", rev.name(), info.path);
            }
        }
    }
    if a.all && a.revs.is_empty() {
        let (templates, set) = aurum::template::store::sign(&repo, &[], &key)?;
        for t in &templates {
            let v = serde_json::json!({"template": t.class, "version": t.version,
                "text": t.text, "key": t.key, "signed": t.signed});
            if !a.json {
                println!(
                    "signed template {} (version {}, text {}) with {}",
                    t.class,
                    t.version,
                    &t.text[..8],
                    t.key
                );
            }
            out.push(v);
        }
        if !a.json {
            println!(
                "signed the template set ({} classes) with {} at {} UTC",
                set.set.classes.len(),
                key.fingerprint(),
                human_time(set.set.signed)
            );
        }
        out.push(serde_json::json!({"template_set": set.set.classes.len(),
            "key": key.fingerprint(), "signed": set.set.signed}));
    }
    if a.json {
        return print_json(&out);
    }
    Ok(())
}
