//! Migration from SystemImager: `import-si` (an image directory) and `template import-si` (a
//! disk layout).

use std::path::PathBuf;

use aurum::migrate::{image, layout};
use aurum::name::ClassName;
use aurum::repo::{Lock, Repository};
use aurum::template::store;
use clap::Args;

use super::{print_json, say, Global};

/// Convert a SystemImager disk layout (autoinstallscript.conf or disks-layout.xml) into a
/// partition template, and save it as a class.
///
/// Reads disks (msdos or gpt labels; primary, extended and logical partitions; sizes in MB,
/// other units or %, and `*`), software RAID, LVM, fsinfo (filesystems, mount points, labels,
/// mount and mkfs options) and the bootloader section. What a template cannot express is
/// refused with the element, the attribute and the reason, and nothing is saved. Disks are
/// placed by name (sda first, sdb second...); a disk the layout skips is left untouched.
/// Notes say what was dropped on purpose (fstab lines for proc, sysfs...).
#[derive(Args)]
pub struct TemplateImportSiArgs {
    /// The layout file.
    file: PathBuf,
    /// The class to save it as (default: the file's name without its extension, e.g.
    /// compute for SystemImager 5's disks-layouts/compute.xml; an autoinstallscript.conf needs
    /// --class).
    #[arg(long)]
    class: Option<ClassName>,
    /// Write the template to this file instead of saving it in the repository.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Print the result as JSON: class, version (when saved), notes, the template's text.
    #[arg(long)]
    json: bool,
}

pub fn template_import_si(g: &Global, a: TemplateImportSiArgs) -> anyhow::Result<()> {
    let class = match (&a.class, &a.output) {
        (Some(c), _) => c.clone(),
        (None, Some(out)) => store::class_of(out)?,
        (None, None) => match store::class_of(&a.file) {
            Ok(c) if c != "autoinstallscript" => c,
            _ => {
                return Err(aurum::Error::Invalid(format!(
                    "{}: the file's name says no class: give one with --class NAME",
                    a.file.display()
                ))
                .into())
            }
        },
    };
    let xml = std::fs::read_to_string(&a.file).map_err(|e| aurum::Error::Io {
        path: a.file.clone(),
        source: e,
    })?;
    let c = layout::convert(&xml, &a.file.display().to_string(), &class)?;
    let version = match &a.output {
        Some(out) => {
            std::fs::write(out, &c.text).map_err(|e| aurum::Error::Io {
                path: out.clone(),
                source: e,
            })?;
            None
        }
        None => {
            let mut repo = Repository::open(&g.repo, Lock::Shared)?;
            let note = format!("converted from SystemImager layout {}", a.file.display());
            Some(store::save(&mut repo, &class, &c.text, &note)?.0)
        }
    };
    if a.json {
        return print_json(&serde_json::json!({
            "class": class,
            "version": version,
            "output": a.output,
            "notes": c.notes,
            "text": c.text,
        }));
    }
    for n in &c.notes {
        say!("note: {n}");
    }
    match (&a.output, version) {
        (Some(out), _) => println!(
            "wrote class {class} to {}; save it with `aurum template import {}`",
            out.display(),
            out.display()
        ),
        (None, Some(v)) => println!(
            "class {class}: version {v}; see it with `aurum template render {class} --disk-size SIZE`"
        ),
        (None, None) => {}
    }
    Ok(())
}

/// Import a SystemImager image directory, with its overrides, exclude files and disk layout.
///
/// The directory (/var/lib/systemimager/images/NAME) becomes a revision of image NAME,
/// captured with the image's etc/systemimager/*.exclude rules (getimage.exclude...) and
/// aurum's default excludes. The overrides (/var/lib/systemimager/overrides/NAME, beside the
/// image, or --overrides) become a revision of image override.NAME, which aurum lays over the
/// image on the nodes of group NAME (or any node following it: `updateclient --override`).
/// updateclient.local.exclude stays in the image at /etc/systemimager/, where the nodes read it
/// with `exclude-file` in node.toml or `updateclient --exclude-file`. The layout in
/// etc/systemimager/autoinstallscript.conf (or --layout) becomes the template of class NAME.
/// Everything is checked before anything is captured: a refused layout or an unreadable
/// exclude rule leaves the repository as it was.
#[derive(Args)]
pub struct ImportSiArgs {
    /// The SystemImager image directory.
    dir: PathBuf,
    /// The aurum image to capture it as (default: the directory's name).
    #[arg(long)]
    image: Option<String>,
    /// The overrides directory (default: ../../overrides/NAME beside the image, if it exists).
    #[arg(long, value_name = "DIR", conflicts_with = "no_overrides")]
    overrides: Option<PathBuf>,
    /// Import no overrides.
    #[arg(long)]
    no_overrides: bool,
    /// The image to capture the overrides as (default: override.NAME, laid over the nodes of
    /// group NAME; `override` lays it over every node).
    #[arg(long, value_name = "IMAGE")]
    override_image: Option<String>,
    /// A layout file (autoinstallscript.conf or disks-layout.xml) instead of the image's own
    /// etc/systemimager/autoinstallscript.conf.
    #[arg(long, value_name = "FILE")]
    layout: Option<PathBuf>,
    /// The class to save the layout as (default: the image's name).
    #[arg(long)]
    class: Option<ClassName>,
    /// Do not apply aurum's default capture excludes, only the image's own exclude files.
    #[arg(long)]
    no_default_excludes: bool,
    /// Print what would be imported (the checked plan); capture nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn import_si(g: &Global, a: ImportSiArgs) -> anyhow::Result<()> {
    let plan = image::plan(&image::ImportOptions {
        dir: a.dir,
        image: a.image,
        overrides: a.overrides,
        no_overrides: a.no_overrides,
        override_image: a.override_image,
        layout: a.layout,
        class: a.class,
        no_default_excludes: a.no_default_excludes,
    })?;
    if a.dry_run {
        if a.json {
            return print_json(&plan);
        }
        print_plan(&plan);
        println!("dry run: nothing was captured");
        return Ok(());
    }
    let mut repo = Repository::open(&g.repo, Lock::Shared)?;
    let progress = g.progress();
    let r = image::run(&mut repo, plan, progress.as_ref())?;
    for w in &r.warnings {
        super::warning(w);
    }
    if a.json {
        return print_json(&r);
    }
    print_plan(&r.plan);
    println!(
        "image {} {} ({} files)",
        r.revision,
        &r.id[..8.min(r.id.len())],
        r.files
    );
    if let Some(o) = &r.override_revision {
        println!("overrides {o}");
    }
    if let Some((class, v)) = &r.template {
        println!("template class {class}: version {v}");
    }
    Ok(())
}

/// The plan for people: what comes from where.
fn print_plan(p: &image::ImportPlan) {
    println!("image {} from {}", p.image, p.dir.display());
    for f in &p.capture_exclude_files {
        println!("  capture excludes from {}", f.display());
    }
    if let Some(f) = &p.update_exclude_file {
        println!(
            "  node update excludes: {f} (in the image; nodes use it with exclude-file = [\"{f}\"] in /etc/aurum/node.toml, or updateclient --exclude-file {f})"
        );
    }
    match &p.overrides {
        Some((d, name)) => println!("  overrides {} as image {name}", d.display()),
        None => println!("  no overrides"),
    }
    match &p.layout {
        Some((f, class, c)) => {
            println!("  layout {} as class {class}", f.display());
            for n in &c.notes {
                println!("    note: {n}");
            }
        }
        None => println!("  no layout (no etc/systemimager/autoinstallscript.conf; give --layout)"),
    }
}
