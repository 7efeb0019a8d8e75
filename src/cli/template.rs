//! `template` subcommands: list, show, check, render, match, edit, new, import, import-si
//! (in `si.rs`, with the other SystemImager migration command).

use std::path::PathBuf;

use aurum::name::ClassName;
use aurum::repo::{Lock, Repository};
use aurum::template::size::{human, parse_bytes};
use aurum::template::{render, smallest_disk, store, Template};
use clap::{Args, Subcommand};

use super::{human_time, open, print_json, Global};

/// Partition templates: one per hardware class, rendered for each node's real disks.
///
/// Templates live in the repository's catalog, versioned (every save is a new version; `show`
/// lists the previous ones), and as templates/CLASS.toml beside refs/ so nodes find them on any
/// copy of the repository. `aurum init` seeds the shipped ones (compute, login, master,
/// bios-legacy, raid1, lvm). The format is in the book's "Partition templates" chapter.
#[derive(Args)]
pub struct TemplateArgs {
    #[command(subcommand)]
    cmd: TemplateCmd,
}

#[derive(Subcommand)]
enum TemplateCmd {
    List(ListArgs),
    Show(ShowArgs),
    Check(CheckArgs),
    Render(RenderArgs),
    Match(MatchArgs),
    Edit(EditArgs),
    New(NewArgs),
    Import(ImportArgs),
    ImportSi(super::si::TemplateImportSiArgs),
    Sign(SignArgs),
}

/// List the classes: newest version, disk range, description.
#[derive(Args)]
struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Print a class's template (the newest version, or CLASS@N for version N) and list its
/// versions.
#[derive(Args)]
struct ShowArgs {
    /// CLASS, or CLASS@N for an older version.
    class: String,
}

/// Check template files (or, with none, every class in the repository).
///
/// A file's class is its name without `.toml`. Each is parsed strictly (unknown keys, bad
/// sizes and impossible layouts are errors naming the file and line) and rendered on the
/// smallest disk it fits, which is printed. Exits 2 when any is wrong.
#[derive(Args)]
struct CheckArgs {
    files: Vec<PathBuf>,
}

/// Print the exact partition plan of a class for given disk sizes.
///
/// Every partition starts and ends on a MiB boundary; the first MiB and the last 33 sectors
/// hold the GPT. A disk too small for the class is refused with the shortfall.
#[derive(Args)]
struct RenderArgs {
    /// A class in the repository, or a template file (`./new.toml`).
    class: String,
    /// Size of each disk (20GiB, 500GB, 21474836480B); one value serves every disk.
    #[arg(long, required = true, value_name = "SIZE")]
    disk_size: Vec<String>,
    /// Print the plan as JSON (bytes).
    #[arg(long)]
    json: bool,
}

/// Say which class a machine belongs to, and why.
///
/// Each class's [match] section is checked against the facts (disk sizes, DMI vendor and
/// product, memory, CPUs, firmware) and its template rendered on the machine's disks; the
/// matching class stating the most criteria wins, a tie is refused.
#[derive(Args)]
struct MatchArgs {
    /// Facts saved by `aurum facts --json` on the machine (default: this machine's).
    #[arg(long, value_name = "FILE")]
    facts: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Edit a class's template in $EDITOR, saving it as a new version only when it is valid.
///
/// The editor opens a copy. On save the copy is checked and rendered on the class's smallest
/// matching disk; a valid copy becomes the next version, an invalid one is refused with the
/// reason (file and line), the old version stays current, and the copy is kept for another try.
#[derive(Args)]
struct EditArgs {
    class: ClassName,
    /// Edit this file instead of a copy of the newest version (to retry a refused edit).
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
    /// Print JSON at the end: {"class", "version", "previous", "saved"}.
    #[arg(long)]
    json: bool,
}

/// Create a class, as a copy of another class (default: compute).
#[derive(Args)]
struct NewArgs {
    class: ClassName,
    /// The class to copy.
    #[arg(long, default_value = "compute", value_name = "CLASS")]
    from: ClassName,
    /// Print JSON: {"class", "version", "from"}.
    #[arg(long)]
    json: bool,
}

/// Add or update classes from template files (class = file name without .toml).
#[derive(Args)]
struct ImportArgs {
    files: Vec<PathBuf>,
    /// Also import the templates shipped with aurum (what `aurum init` does).
    #[arg(long)]
    shipped: bool,
    /// Sign what is imported (each class's newest version) with this key, so that
    /// installers with `trusted-keys` take it (see `aurum template sign`).
    #[command(flatten)]
    key: super::trust::SignKeyArgs,
    /// Print JSON: [{"class", "version", "changed"}...].
    #[arg(long)]
    json: bool,
}

/// Sign classes' newest templates, so that installers that check signatures take them.
///
/// A partition template decides what is written where on a node's disks, so an installer
/// with `trusted-keys` (node.toml, the boot kit's `--trusted-key`, `install --trusted-key`)
/// refuses a template no trusted key signed, before anything is written. The signature is
/// over the class and the template's text (not its version number: a pull numbers versions
/// anew), in public/sigs/_templates/CLASS/ID, and travels with pull and push. Sign again
/// after every edit or import (or give `template import` --sign-key). Signing again with the
/// same key replaces its earlier signature; other keys' are kept.
///
/// Each run also signs the template set (public/sigs/_template-set): every class with the id
/// of its newest text, and the time. Installers go by the newest set a trusted key signed:
/// they refuse a template it does not name (an older signed text a server replays), a class
/// list that leaves out one of its classes, and, with node.toml's `max-age`, a set signed
/// longer ago than that (run `aurum template sign --sign-key KEY` from cron then, as `aurum
/// sign IMAGE` for the heads).
#[derive(Args)]
struct SignArgs {
    /// The classes; none: every class (its newest version).
    #[arg(value_name = "CLASS")]
    classes: Vec<ClassName>,
    #[command(flatten)]
    key: super::trust::SignKeyArgs,
    /// Print JSON: a list of {"class", "version", "text", "key", "signed"}.
    #[arg(long)]
    json: bool,
}

fn sign(g: &Global, a: SignArgs) -> anyhow::Result<()> {
    let key = a.key.required()?;
    let repo = Repository::open(&g.repo, Lock::Exclusive)?;
    let (signed, set) = store::sign(&repo, &a.classes, &key)?;
    super::say!(
        "aurum: signed the template set ({} classes) with {}",
        set.set.classes.len(),
        key.fingerprint()
    );
    if a.json {
        return print_json(&signed);
    }
    for s in &signed {
        println!(
            "signed template {} (version {}, text {}) with {}",
            s.class,
            s.version,
            &s.text[..8],
            s.key
        );
    }
    Ok(())
}

pub fn exec(g: &Global, a: TemplateArgs) -> anyhow::Result<()> {
    match a.cmd {
        TemplateCmd::List(a) => list(g, a),
        TemplateCmd::Show(a) => show(g, a),
        TemplateCmd::Check(a) => check(g, a),
        TemplateCmd::Render(a) => render_cmd(g, a),
        TemplateCmd::Match(a) => match_cmd(g, a),
        TemplateCmd::Edit(a) => edit(g, a),
        TemplateCmd::New(a) => new(g, a),
        TemplateCmd::Import(a) => import(g, a),
        TemplateCmd::ImportSi(a) => super::si::template_import_si(g, a),
        TemplateCmd::Sign(a) => sign(g, a),
    }
}

fn list(g: &Global, a: ListArgs) -> anyhow::Result<()> {
    let repo = open(g)?;
    let all = repo.catalog.templates()?;
    if a.json {
        let v: Vec<_> = all
            .iter()
            .map(|v| serde_json::json!({"class": v.class, "version": v.version, "created": v.created, "note": v.note}))
            .collect();
        return print_json(&v);
    }
    for v in all {
        let t = Template::parse(&v.class, &format!("{}.toml", v.class), &v.text)?;
        let m = &t.file.matching;
        println!(
            "{:<14} v{:<3} disk {:>9} .. {:<9} {}",
            v.class,
            v.version,
            m.disk_min.map_or("-".into(), |b| human(b.0)),
            m.disk_max.map_or("-".into(), |b| human(b.0)),
            t.file.description
        );
    }
    Ok(())
}

fn show(g: &Global, a: ShowArgs) -> anyhow::Result<()> {
    let repo = open(g)?;
    let (class, version) = match a.class.split_once('@') {
        Some((c, n)) => (
            c,
            Some(n.parse::<u32>().map_err(|_| {
                aurum::Error::Invalid(format!("`{n}` is not a version number (CLASS@N)"))
            })?),
        ),
        None => (a.class.as_str(), None),
    };
    let class = ClassName::new(class)?;
    let (v, _) = store::load(&repo, &class, version)?;
    let versions = repo.catalog.template_versions(&class)?;
    println!(
        "# class {}, version {} of {} ({}, {})",
        v.class,
        v.version,
        versions.len(),
        human_time(v.created),
        v.note
    );
    for p in versions.iter().rev().filter(|p| p.version != v.version) {
        println!(
            "# version {}: {}, {} (aurum template show {}@{})",
            p.version,
            human_time(p.created),
            p.note,
            p.class,
            p.version
        );
    }
    print!("{}", v.text);
    Ok(())
}

/// Checks one template; the line to print when it is good.
fn check_one(t: &Template) -> anyhow::Result<String> {
    let min = smallest_disk(t).ok_or_else(|| {
        aurum::Error::Invalid(format!("class {} fits no disk up to 1 PiB", t.class))
    })?;
    let first = t.file.matching.disk_min.map(|b| b.0);
    if let Some(m) = first {
        let sizes = vec![m; t.file.disks.len()];
        render(t, &sizes).map_err(|e| {
            aurum::Error::Invalid(format!("its [match] disk-min is too small: {e}"))
        })?;
    }
    Ok(format!(
        "ok  {:<14} {} disk(s), fits disks from {}",
        t.class,
        t.file.disks.len(),
        human(min)
    ))
}

fn check(g: &Global, a: CheckArgs) -> anyhow::Result<()> {
    let mut bad = 0;
    let items: Vec<(String, anyhow::Result<Template>)> = if a.files.is_empty() {
        let repo = open(g)?;
        repo.catalog
            .templates()?
            .into_iter()
            .map(|v| {
                let origin = format!("{}.toml", v.class);
                (
                    origin.clone(),
                    Template::parse(&v.class, &origin, &v.text).map_err(Into::into),
                )
            })
            .collect()
    } else {
        a.files
            .iter()
            .map(|f| {
                let r = (|| -> anyhow::Result<Template> {
                    let class = store::class_of(f)?;
                    let text = std::fs::read_to_string(f).map_err(|e| aurum::Error::Io {
                        path: f.clone(),
                        source: e,
                    })?;
                    Ok(Template::parse(&class, &f.display().to_string(), &text)?)
                })();
                (f.display().to_string(), r)
            })
            .collect()
    };
    for (origin, t) in items {
        match t.and_then(|t| check_one(&t)) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                bad += 1;
                eprintln!("bad {origin}: {e:#}");
            }
        }
    }
    if bad > 0 {
        return Err(aurum::Error::Invalid(format!("{bad} template(s) are wrong")).into());
    }
    Ok(())
}

/// A class from the repository, or a template file when `spec` names one.
fn template_arg(g: &Global, spec: &str) -> anyhow::Result<Template> {
    let p = std::path::Path::new(spec);
    if spec.ends_with(".toml") || spec.contains('/') {
        let text = std::fs::read_to_string(p).map_err(|e| aurum::Error::Io {
            path: p.to_path_buf(),
            source: e,
        })?;
        return Ok(Template::parse(&store::class_of(p)?, spec, &text)?);
    }
    Ok(store::load(&open(g)?, &ClassName::new(spec)?, None)?.1)
}

fn render_cmd(g: &Global, a: RenderArgs) -> anyhow::Result<()> {
    let t = template_arg(g, &a.class)?;
    let mut sizes = a
        .disk_size
        .iter()
        .map(|s| parse_bytes(s).map_err(aurum::Error::Invalid))
        .collect::<Result<Vec<u64>, _>>()?;
    while sizes.len() < t.file.disks.len() {
        sizes.push(*sizes.last().expect("at least one size"));
    }
    let plan = render(&t, &sizes)?;
    if a.json {
        return print_json(&plan);
    }
    print!("{}", plan.table());
    Ok(())
}

fn match_cmd(g: &Global, a: MatchArgs) -> anyhow::Result<()> {
    let facts = match &a.facts {
        Some(f) => aurum::facts::load(f)?,
        None => aurum::facts::gather(std::path::Path::new("/"))?,
    };
    let repo = open(g)?;
    let templates = store::all(&repo)?;
    let (verdicts, chosen) = aurum::template::matching::choose(&templates, &facts);
    if a.json {
        print_json(&serde_json::json!({
            "class": chosen.as_ref().ok(),
            "error": chosen.as_ref().err().map(|e| e.to_string()),
            "verdicts": verdicts,
        }))?;
    } else {
        for v in &verdicts {
            println!(
                "{} {} ({} criteria)",
                if v.matches { "match   " } else { "no match" },
                v.class,
                v.score
            );
            for r in &v.reasons {
                println!("    {r}");
            }
        }
    }
    let class = chosen?;
    if !a.json {
        println!("class: {class}");
    }
    Ok(())
}

/// Runs $EDITOR (or $VISUAL, else vi) on `file`.
fn run_editor(file: &std::path::Path) -> anyhow::Result<()> {
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    // Through sh, so EDITOR may carry options ("emacs -nw").
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(file)
        .status()?;
    if !st.success() {
        return Err(aurum::Error::Invalid(format!(
            "the editor ({editor}) failed ({st}); nothing was saved"
        ))
        .into());
    }
    Ok(())
}

fn edit(g: &Global, a: EditArgs) -> anyhow::Result<()> {
    let mut repo = Repository::open(&g.repo, Lock::Shared)?;
    let (old, _) = store::load(&repo, &a.class, None)?;
    let copy = tempfile::Builder::new()
        .prefix(&format!("aurum-template-{}.", a.class))
        .suffix(".toml")
        .tempfile()?
        .into_temp_path()
        .keep()?;
    let start = match &a.from_file {
        Some(f) => std::fs::read_to_string(f).map_err(|e| aurum::Error::Io {
            path: f.clone(),
            source: e,
        })?,
        None => old.text.clone(),
    };
    std::fs::write(&copy, &start).map_err(|e| aurum::Error::Io {
        path: copy.clone(),
        source: e,
    })?;
    run_editor(&copy)?;
    let text = std::fs::read_to_string(&copy).map_err(|e| aurum::Error::Io {
        path: copy.clone(),
        source: e,
    })?;
    if text == old.text {
        let _ = std::fs::remove_file(&copy);
        if a.json {
            return print_json(&serde_json::json!({
                "class": a.class, "version": old.version, "previous": old.version, "saved": false,
            }));
        }
        println!(
            "class {}: no change (still version {})",
            a.class, old.version
        );
        return Ok(());
    }
    let checked = Template::parse(&a.class, &format!("{}.toml", a.class), &text)
        .map_err(anyhow::Error::from)
        .and_then(|t| check_one(&t).map(|line| (t, line)));
    match checked {
        Ok((t, line)) => {
            let size = t
                .file
                .matching
                .disk_min
                .map(|b| b.0)
                .or_else(|| smallest_disk(&t))
                .expect("check_one found a size");
            let plan = render(&t, &vec![size; t.file.disks.len()])?;
            let (v, _) = store::save(&mut repo, &a.class, &text, "edited")?;
            let _ = std::fs::remove_file(&copy);
            if a.json {
                return print_json(&serde_json::json!({
                    "class": a.class, "version": v, "previous": old.version, "saved": true,
                }));
            }
            print!("{}", plan.table());
            println!("{line}");
            println!(
                "class {} saved as version {v} (version {} kept: aurum template show {}@{})",
                a.class, old.version, a.class, old.version
            );
            Ok(())
        }
        Err(e) => Err(aurum::Error::Invalid(format!(
            "{e:#}\nthe template was NOT saved: class {} stays at version {}; your copy is in {} (retry with `aurum template edit {} --from-file {}`)",
            a.class,
            old.version,
            copy.display(),
            a.class,
            copy.display()
        ))
        .into()),
    }
}

fn new(g: &Global, a: NewArgs) -> anyhow::Result<()> {
    let mut repo = Repository::open(&g.repo, Lock::Shared)?;
    if repo.catalog.template(&a.class, None)?.is_some() {
        return Err(aurum::Error::Invalid(format!(
            "class {} exists: change it with `aurum template edit {}`",
            a.class, a.class
        ))
        .into());
    }
    let text = match repo.catalog.template(&a.from, None)? {
        Some(v) => v.text,
        None => store::SHIPPED
            .iter()
            .find(|(c, _)| a.from == *c)
            .map(|(_, t)| t.to_string())
            .ok_or_else(|| aurum::Error::NotFound(format!("no class {} to copy", a.from)))?,
    };
    let (v, _) = store::save(
        &mut repo,
        &a.class,
        &text,
        &format!("new, copied from {}", a.from),
    )?;
    if a.json {
        return print_json(&serde_json::json!({"class": a.class, "version": v, "from": a.from}));
    }
    println!(
        "class {} created (version {v}, a copy of {}); change it with `aurum template edit {}`",
        a.class, a.from, a.class
    );
    Ok(())
}

fn import(g: &Global, a: ImportArgs) -> anyhow::Result<()> {
    let key = a.key.load()?;
    let lock = match key {
        Some(_) => Lock::Exclusive,
        None => Lock::Shared,
    };
    let mut repo = Repository::open(&g.repo, lock)?;
    if a.files.is_empty() && !a.shipped {
        return Err(aurum::Error::Invalid("give template files, or --shipped".into()).into());
    }
    let mut done = Vec::new();
    if a.shipped {
        done.extend(store::seed(&mut repo)?);
    }
    for f in &a.files {
        let class = store::class_of(f)?;
        if !f.exists() {
            return Err(aurum::Error::NotFound(format!(
                "no template file {}: give CLASS.toml files; `aurum template show CLASS` prints \
                 one to start from",
                f.display()
            ))
            .into());
        }
        let text = std::fs::read_to_string(f).map_err(|e| aurum::Error::Io {
            path: f.clone(),
            source: e,
        })?;
        let (v, new) = store::save(
            &mut repo,
            &class,
            &text,
            &format!("imported from {}", f.display()),
        )?;
        done.push((class, v, new));
    }
    if let Some(key) = &key {
        let classes: Vec<ClassName> = done.iter().map(|(c, _, _)| c.clone()).collect();
        let (signed, set) = store::sign(&repo, &classes, key)?;
        for s in signed {
            super::say!("aurum: signed template {} with {}", s.class, s.key);
        }
        super::say!(
            "aurum: signed the template set ({} classes) with {}",
            set.set.classes.len(),
            key.fingerprint()
        );
    }
    if a.json {
        let v: Vec<_> = done
            .iter()
            .map(
                |(class, v, new)| serde_json::json!({"class": class, "version": v, "changed": new}),
            )
            .collect();
        return print_json(&v);
    }
    for (class, v, new) in done {
        println!(
            "{class}: version {v}{}",
            if new { "" } else { " (unchanged)" }
        );
    }
    Ok(())
}
