//! Templates kept in a repository: versioned in the catalog, mirrored as plain files.
//!
//! The catalog holds every version (`templates` table, schema 3). The newest version of each
//! class is also written to `templates/CLASS.toml` in the repository, beside `refs/`, so a node
//! installing from any static copy of the repository (nginx, a cache) finds its class's
//! template as a plain file, exactly as it finds refs and manifests; `aurum serve` adds
//! `/api/v1/templates/CLASS` for the same bytes.
//!
//! A repository is seeded with the shipped templates by `aurum init` (they are compiled into
//! the binary, so an installer needs no data files); `aurum template import` adds or updates
//! classes from files later.

use std::path::Path;

use super::Template;
use crate::apply::source::{HttpRepo, RevisionSource};
use crate::catalog::TemplateVersion;
use crate::error::{Error, IoContext, Result};
use crate::format::signature::{self, TemplateSet, TemplateSetSignature, TemplateSignature};
use crate::format::Id;
use crate::name::ClassName;
use crate::repo::Repository;
use crate::trust::{self, Refusal, TrustedKeys};

/// The templates shipped in partition-templates/, compiled in: `(class, text)`.
pub const SHIPPED: &[(&str, &str)] = &[
    (
        "bios-legacy",
        include_str!("../../partition-templates/bios-legacy.toml"),
    ),
    (
        "compute",
        include_str!("../../partition-templates/compute.toml"),
    ),
    (
        "login",
        include_str!("../../partition-templates/login.toml"),
    ),
    ("lvm", include_str!("../../partition-templates/lvm.toml")),
    (
        "master",
        include_str!("../../partition-templates/master.toml"),
    ),
    (
        "raid1",
        include_str!("../../partition-templates/raid1.toml"),
    ),
];

/// The class a template file is for: its stem (`compute.toml` -> `compute`).
pub fn class_of(path: &Path) -> Result<ClassName> {
    ClassName::new(
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    )
}

/// Path of the mirror file of `class`.
pub fn mirror_path(repo: &Path, class: &ClassName) -> std::path::PathBuf {
    crate::store::published(repo)
        .join("templates")
        .join(format!("{class}.toml"))
}

/// Checks `text` and saves it as the next version of `class`. Returns `(version, is_new)`.
pub fn save(
    repo: &mut Repository,
    class: &ClassName,
    text: &str,
    note: &str,
) -> Result<(u32, bool)> {
    Template::parse(class, &format!("{class}.toml"), text)?;
    let publishing = repo.publishing()?;
    let r = match repo.catalog.add_template(class, text, note) {
        Ok(r) => r,
        Err(e) => {
            // Nothing changed: nothing to publish.
            publishing.done();
            return Err(e);
        }
    };
    crate::repo::publish::write(&repo.root, &crate::repo::publish::templates(&repo.catalog)?)?;
    publishing.done();
    if r.1 {
        repo.catalog.event(
            "template",
            None,
            &format!("{class} version {}: {note}", r.0),
        )?;
    }
    Ok(r)
}

/// The newest (or a given) version of `class`, parsed.
pub fn load(
    repo: &Repository,
    class: &ClassName,
    version: Option<u32>,
) -> Result<(TemplateVersion, Template)> {
    let v = repo.catalog.template(class, version)?.ok_or_else(|| {
        Error::NotFound(match version {
            Some(n) => format!("class {class} has no version {n} (`aurum template show {class}` lists them)"),
            None => format!(
                "no template for class {class} in {}: `aurum template list` shows the classes, `aurum template import FILE` adds one",
                repo.root.display()
            ),
        })
    })?;
    let t = Template::parse(
        class,
        &format!("{class}.toml (version {})", v.version),
        &v.text,
    )?;
    Ok((v, t))
}

/// The newest version of every class, parsed.
pub fn all(repo: &Repository) -> Result<Vec<Template>> {
    repo.catalog
        .templates()?
        .iter()
        .map(|v| Template::parse(&v.class, &format!("{}.toml", v.class), &v.text))
        .collect()
}

/// The templates a node installing from `http` (a server or any static copy of a repository)
/// can use: `class` alone, or every class listed in `templates/CLASSES`. With `keys`, each
/// must be signed by one of them ([`check_installed`]): all of them, when the class is to be
/// picked from the facts, since an unsigned one dropped could change which class matches.
/// And each must be the text the newest template set a trusted key signed names for its
/// class, that set no older than `max_age` seconds, and `templates/CLASSES` must list exactly
/// the set's classes ([`checked_set`]): a template's own signature does not say it is still
/// current, so without the set a server could replay an older signed text or drop a class.
pub fn from_server(
    http: &HttpRepo,
    class: Option<&ClassName>,
    keys: &TrustedKeys,
    max_age: Option<i64>,
) -> Result<Vec<Template>> {
    let source = http.describe();
    let set = match keys.is_empty() {
        true => None,
        false => {
            let data = match http.get(signature::TEMPLATE_SET_PATH) {
                Ok(data) => Some(data),
                Err(Error::NotFound(_)) => None,
                Err(e) => return Err(e),
            };
            Some(checked_set(data.as_deref(), &source, keys, max_age)?)
        }
    };
    let classes: Vec<ClassName> = match class {
        Some(c) => vec![c.clone()],
        None => {
            let listed = crate::format::refs::decode_classes(&http.get("templates/CLASSES")?)
                .map_err(|p| {
                    crate::error::corrupt(format!("templates/CLASSES on the server: {p}"))
                })?;
            if let Some(set) = &set {
                same_classes(set, &listed, "templates/CLASSES", &source)?;
            }
            listed
        }
    };
    classes
        .iter()
        .map(|c| {
            let text = http.get(&format!("templates/{c}.toml"))?;
            let text = String::from_utf8(text).map_err(|_| {
                crate::error::corrupt(format!("templates/{c}.toml on the server is not UTF-8"))
            })?;
            if let Some(set) = &set {
                let id = Id::of(text.as_bytes());
                let sigs = match http.get(&signature::template_path(c.as_str(), &id)) {
                    Ok(data) => Some(data),
                    Err(Error::NotFound(_)) => None,
                    Err(e) => return Err(e),
                };
                check_installed(c, &id, sigs.as_deref(), &source, keys)?;
                named_by(set, c, &id, &source)?;
            }
            Template::parse(c, &format!("{source}/templates/{c}.toml"), &text)
        })
        .collect()
}

/// The template set an installer goes by: the newest block of the set file `data` a key of
/// `keys` signed, no older than `max_age` seconds; refused (before anything is written)
/// when there is none or it is stale.
pub fn checked_set(
    data: Option<&[u8]>,
    source: &str,
    keys: &TrustedKeys,
    max_age: Option<i64>,
) -> Result<TemplateSet> {
    let sign = "`aurum template sign --sign-key KEY` on the image server";
    let refuse = |why: String| {
        Error::Untrusted(format!(
            "refusing the templates from {source}: the template set ({}), which names the \
             current template of every class, {why}. Nothing on this node was changed",
            signature::TEMPLATE_SET_PATH
        ))
    };
    let sigs = match data {
        None => Vec::new(),
        Some(data) => signature::decode::<TemplateSetSignature>(data).map_err(|p| {
            refuse(format!(
                "is unreadable ({p}): the server's copy is damaged or was altered; sign it \
                 again with {sign}"
            ))
        })?,
    };
    let (i, accepted) = trust::accept_template_set(&sigs, keys).map_err(|r| {
        refuse(match r {
            Refusal::Unsigned => format!(
                "is missing or empty (the templates were signed by an aurum older than the \
                 set, or never); sign them with {sign}"
            ),
            Refusal::Untrusted(k) => format!(
                "is signed only by keys not trusted here ({}); sign it with a trusted key: {sign}",
                k.join(", ")
            ),
            Refusal::Revoked(k) => format!(
                "is signed only by revoked keys ({}); sign it again with a current key: {sign}",
                k.join(", ")
            ),
            Refusal::Altered(why) => format!(
                "does not check out: {why}; it was altered after signing (a tampered server, \
                 mirror or connection): do not use it"
            ),
        })
    })?;
    if let Some(max) = max_age {
        let age = crate::repo::signatures::now() - accepted.signed;
        if age > max {
            return Err(refuse(format!(
                "was signed {} ago (newest trusted signature, by {}), longer than max-age \
                 ({}): the server may be replaying old templates (a freeze attack), or the \
                 master has not signed again. On the master run {sign} (from cron, more often \
                 than max-age), or raise max-age in node.toml",
                crate::apply::verified::human_age(age),
                accepted.key,
                crate::apply::verified::human_age(max)
            )));
        }
    }
    Ok(sigs[i].set.clone())
}

/// Refuses `class`'s text `text` unless `set` names exactly it.
fn named_by(set: &TemplateSet, class: &ClassName, text: &Id, source: &str) -> Result<()> {
    let why = match set.text_of(class.as_str()) {
        Some(t) if t == text => return Ok(()),
        Some(t) => format!(
            "the newest template set a trusted key signed names another text for it ({}): \
             the server is handing out a template that is not the current one (an older \
             signed text replayed), or one changed since the set was signed",
            t.short()
        ),
        None => "the newest template set a trusted key signed has no such class".to_string(),
    };
    Err(Error::Untrusted(format!(
        "refusing the template of class {class} ({}) from {source}: {why}; if the template is \
         meant, sign the current templates with `aurum template sign --sign-key KEY` on the \
         image server. Nothing on this node was changed",
        text.short()
    )))
}

/// Refuses a class list (`what`) that is not exactly the set's classes: a class left out
/// could change which class matches this machine.
fn same_classes(set: &TemplateSet, listed: &[ClassName], what: &str, source: &str) -> Result<()> {
    let dropped: Vec<&str> = set
        .classes
        .iter()
        .map(|(c, _)| c.as_str())
        .filter(|c| !listed.iter().any(|l| l.as_str() == *c))
        .collect();
    let added: Vec<&str> = listed
        .iter()
        .map(ClassName::as_str)
        .filter(|l| set.text_of(l).is_none())
        .collect();
    if dropped.is_empty() && added.is_empty() {
        return Ok(());
    }
    let mut why = Vec::new();
    if !dropped.is_empty() {
        why.push(format!(
            "leaves out {}, which the signed template set names (a class dropped can change \
             which class matches this machine)",
            dropped.join(", ")
        ));
    }
    if !added.is_empty() {
        why.push(format!(
            "lists {}, which the signed template set does not name",
            added.join(", ")
        ));
    }
    Err(Error::Untrusted(format!(
        "refusing the templates from {source}: its {what} {}: the list was altered, or the \
         templates changed since the set was signed (`aurum template sign --sign-key KEY` on \
         the image server signs it again). Nothing on this node was changed",
        why.join(", and ")
    )))
}

/// Refuses `class`'s template (text id `text`) from `source` unless its signatures file
/// `sigs` holds a signature by one of `keys`. A partition template decides what is written
/// where on a node's disks, so an installer that checks revisions checks it too, before
/// anything is written.
fn check_installed(
    class: &ClassName,
    text: &Id,
    sigs: Option<&[u8]>,
    source: &str,
    keys: &TrustedKeys,
) -> Result<()> {
    unsigned_because(class, text, sigs, keys).map_err(|why| {
        Error::Untrusted(format!(
            "refusing the template of class {class} ({}) from {source}: {why}. Nothing on \
             this node was changed",
            text.short()
        ))
    })
}

/// Why `class`'s template (text id `text`, signatures file `sigs`) does not pass `keys`.
pub fn unsigned_because(
    class: &ClassName,
    text: &Id,
    sigs: Option<&[u8]>,
    keys: &TrustedKeys,
) -> std::result::Result<(), String> {
    let sign = format!("`aurum template sign {class} --sign-key KEY` on the image server");
    let sigs = match sigs {
        None => Vec::new(),
        Some(data) => signature::decode::<TemplateSignature>(data).map_err(|p| {
            format!(
                "its signatures file {} is unreadable ({p}): the server's copy is damaged or \
                 was altered; sign it again with {sign}",
                signature::template_path(class.as_str(), text)
            )
        })?,
    };
    trust::accept_template(&sigs, class.as_str(), text, keys)
        .map(|_| ())
        .map_err(|r| match r {
            Refusal::Unsigned => format!("it has no signature; sign it with {sign}"),
            Refusal::Untrusted(k) => format!(
                "it is signed only by keys not trusted here ({}); if one is an \
                 administrator's, add its public key to `trusted-keys`, else sign it with {sign}",
                k.join(", ")
            ),
            Refusal::Revoked(k) => format!(
                "it is signed only by revoked keys ({}); sign it again with a current key: \
                 {sign}",
                k.join(", ")
            ),
            Refusal::Altered(why) => format!(
                "its signature does not check out: {why}; the template or its signature was \
                 altered after signing (a tampered server, mirror or connection): do not use it"
            ),
        })
}

/// The same from a repository directory.
pub fn from_repo(
    repo: &Repository,
    class: Option<&ClassName>,
    keys: &TrustedKeys,
    max_age: Option<i64>,
) -> Result<Vec<Template>> {
    let source = repo.root.display().to_string();
    let versions = match class {
        Some(c) => vec![load(repo, c, None)?.0],
        None => repo.catalog.templates()?,
    };
    let set = match keys.is_empty() {
        true => None,
        false => {
            let path = crate::store::published(&repo.root).join(signature::TEMPLATE_SET_PATH);
            let data = match std::fs::read(&path) {
                Ok(d) => Some(d),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e).at(&path),
            };
            let set = checked_set(data.as_deref(), &source, keys, max_age)?;
            if class.is_none() {
                let listed: Vec<ClassName> = versions.iter().map(|v| v.class.clone()).collect();
                same_classes(&set, &listed, "catalog", &source)?;
            }
            Some(set)
        }
    };
    versions
        .iter()
        .map(|v| {
            if let Some(set) = &set {
                let id = Id::of(v.text.as_bytes());
                let path = crate::store::published(&repo.root)
                    .join(signature::template_path(v.class.as_str(), &id));
                let sigs = match std::fs::read(&path) {
                    Ok(d) => Some(d),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e).at(&path),
                };
                check_installed(&v.class, &id, sigs.as_deref(), &source, keys)?;
                named_by(set, &v.class, &id, &source)?;
            }
            Template::parse(&v.class, &format!("{}.toml", v.class), &v.text)
        })
        .collect()
}

/// One template signed by [`sign`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct SignedClass {
    pub class: ClassName,
    pub version: u32,
    /// The id of the text signed (hex).
    pub text: String,
    pub key: String,
    pub signed: i64,
}

/// Signs the newest template of each of `classes` (of every class when empty) with `key`,
/// then the template set (every class's newest text: [`TemplateSet`]), which installers
/// that check signatures go by. Needs the repository locked exclusively.
pub fn sign(
    repo: &Repository,
    classes: &[ClassName],
    key: &trust::SigningKey,
) -> Result<(Vec<SignedClass>, signature::TemplateSetSignature)> {
    let versions = match classes.is_empty() {
        true => repo.catalog.templates()?,
        false => classes
            .iter()
            .map(|c| load(repo, c, None).map(|(v, _)| v))
            .collect::<Result<_>>()?,
    };
    let signed = versions
        .into_iter()
        .map(|v| {
            let sig = repo.sign_template(v.class.as_str(), &v.text, key)?;
            Ok(SignedClass {
                class: v.class,
                version: v.version,
                text: sig.template.text.hex(),
                key: key.fingerprint(),
                signed: sig.template.signed,
            })
        })
        .collect::<Result<_>>()?;
    Ok((signed, repo.sign_template_set(key)?))
}

/// Saves the shipped templates the repository lacks (or whose newest version differs).
pub fn seed(repo: &mut Repository) -> Result<Vec<(ClassName, u32, bool)>> {
    let mut out = Vec::new();
    for (class, text) in SHIPPED {
        let class = ClassName::new(*class)?;
        let (v, new) = save(repo, &class, text, "shipped with aurum")?;
        out.push((class, v, new));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_template_parses_and_renders_on_its_smallest_disk() {
        for (class, text) in SHIPPED {
            let c = ClassName::new(*class).unwrap();
            let t = Template::parse(&c, &format!("{class}.toml"), text).unwrap();
            let min = t.file.matching.disk_min.map_or(64 << 30, |b| b.0);
            let sizes = vec![min; t.file.disks.len()];
            super::super::render(&t, &sizes).unwrap_or_else(|e| panic!("{class}: {e}"));
        }
    }
}
