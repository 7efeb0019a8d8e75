//! `aurum import-si`: a SystemImager image directory, its overrides and exclude files, and its
//! disk layout, as an aurum image, an override image and a template.
//!
//! SystemImager keeps an image as a plain tree (`/var/lib/systemimager/images/NAME`), the
//! trees laid over it after an install or update as `/var/lib/systemimager/overrides/NAME`,
//! and the rsync exclude files in the image's `etc/systemimager/`: `getimage.exclude` (what
//! `si_getimage` left out) and `updateclient.local.exclude` (what `si_updateclient` leaves
//! alone on a node). aurum's equivalents:
//!
//! - the tree becomes a revision of image NAME, captured with the image's getimage exclude
//!   rules (and aurum's defaults, which hold SystemImager's), as `aurum getimage
//!   --exclude-file` would;
//! - the overrides tree becomes a revision of the override image (`override.NAME` unless
//!   told otherwise), captured exactly (no default excludes: an override may well carry an
//!   /etc/hostname), which the nodes of group NAME lay over their image;
//! - `updateclient.local.exclude` stays in the image, so every node has it at the path
//!   SystemImager used; its rules are checked here (aurum reads them as rsync does) and the
//!   report says how a node uses them (`exclude-file` in node.toml, or `updateclient
//!   --exclude-file`);
//! - the layout (`etc/systemimager/autoinstallscript.conf` in the image, or a file given)
//!   becomes a template of class NAME (see [`super::layout`]).
//!
//! Everything that can refuse (a rule aurum cannot read, a layout it cannot express) is
//! checked by [`plan`] before anything is captured, so a refused import leaves the repository
//! as it was.

use std::path::PathBuf;

use super::layout::{self, Conversion};
use crate::capture::{self, CaptureOptions, LocalSource};
use crate::error::{invalid, Result};
use crate::excludes::{read_exclude_file, Excludes, ALWAYS_EXCLUDED, DEFAULT_CAPTURE_EXCLUDES};
use crate::name::ClassName;
use crate::progress::Progress;
use crate::repo::Repository;

/// Where SystemImager keeps its exclude files inside an image.
const SI_ETC: &str = "etc/systemimager";
/// The node-side exclude file, by name.
const UPDATE_EXCLUDE: &str = "updateclient.local.exclude";
/// The layout SystemImager 4 keeps in the image.
const IMAGE_LAYOUT: &str = "etc/systemimager/autoinstallscript.conf";

/// What to import.
pub struct ImportOptions {
    /// The image directory (`/var/lib/systemimager/images/NAME`).
    pub dir: PathBuf,
    /// The aurum image; `None`: the directory's name.
    pub image: Option<String>,
    /// The overrides directory; `None`: `../../overrides/NAME` beside the image when it exists.
    pub overrides: Option<PathBuf>,
    /// Import no overrides, even when the directory exists.
    pub no_overrides: bool,
    /// The override image to capture them as; `None`: `override.NAME`.
    pub override_image: Option<String>,
    /// A layout file; `None`: the image's `etc/systemimager/autoinstallscript.conf` if any.
    pub layout: Option<PathBuf>,
    /// The class to save the layout as; `None`: the image's name.
    pub class: Option<ClassName>,
    /// Do not apply aurum's default capture excludes to the image.
    pub no_default_excludes: bool,
}

/// The import, decided: every file read and checked, nothing written yet.
#[derive(Debug, serde::Serialize)]
pub struct ImportPlan {
    pub dir: PathBuf,
    pub image: String,
    /// The capture's exclude rules, in order.
    #[serde(skip)]
    pub patterns: Vec<String>,
    /// The exclude files of the image that became capture rules.
    pub capture_exclude_files: Vec<PathBuf>,
    /// The node-side exclude file, as the nodes will have it (`/etc/systemimager/...`).
    pub update_exclude_file: Option<String>,
    /// `(overrides directory, override image)`.
    pub overrides: Option<(PathBuf, String)>,
    /// `(layout file, class, conversion)`.
    pub layout: Option<(PathBuf, ClassName, Conversion)>,
}

/// What the import made.
#[derive(Debug, serde::Serialize)]
pub struct ImportReport {
    pub plan: ImportPlan,
    /// `IMAGE@N` and id of the image's revision.
    pub revision: String,
    pub id: String,
    pub files: u64,
    pub bytes: u64,
    /// The override image's revision, when overrides were imported.
    pub override_revision: Option<String>,
    /// The template's class and version, when a layout was converted.
    pub template: Option<(String, u32)>,
    pub warnings: Vec<String>,
}

/// Reads and checks everything the import needs; writes nothing.
pub fn plan(o: &ImportOptions) -> Result<ImportPlan> {
    if !o.dir.is_dir() {
        return Err(invalid(format!(
            "{} is not a directory: give a SystemImager image directory (/var/lib/systemimager/images/NAME)",
            o.dir.display()
        )));
    }
    let dir_name = o
        .dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let image = o.image.clone().unwrap_or(dir_name);
    crate::repo::check_name("image", &image)?;
    let mut patterns: Vec<String> = ALWAYS_EXCLUDED.iter().map(|s| s.to_string()).collect();
    let mut capture_exclude_files = Vec::new();
    let mut update_exclude_file = None;
    let etc = o.dir.join(SI_ETC);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&etc)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for f in files
        .into_iter()
        .filter(|f| f.extension().is_some_and(|x| x == "exclude"))
    {
        let rules = read_exclude_file(&f)?;
        // Each file's rules must read as aurum reads them, whichever side uses them.
        Excludes::new(&rules).map_err(|e| {
            invalid(format!(
                "{}: {e}; fix the file (rsync syntax) and import again",
                f.display()
            ))
        })?;
        if f.file_name().is_some_and(|n| n == UPDATE_EXCLUDE) {
            update_exclude_file = Some(format!("/{SI_ETC}/{UPDATE_EXCLUDE}"));
        } else {
            patterns.extend(rules);
            capture_exclude_files.push(f);
        }
    }
    if !o.no_default_excludes {
        patterns.extend(DEFAULT_CAPTURE_EXCLUDES.iter().map(|s| s.to_string()));
    }
    Excludes::new(&patterns)?;
    let overrides = if o.no_overrides {
        None
    } else {
        let beside = o.dir.join("../../overrides").join(&image);
        match &o.overrides {
            Some(d) if !d.is_dir() => {
                return Err(invalid(format!(
                    "--overrides {}: not a directory",
                    d.display()
                )))
            }
            Some(d) => Some(d.clone()),
            None => beside.canonicalize().ok().filter(|d| d.is_dir()),
        }
        .map(|d| {
            let name = o
                .override_image
                .clone()
                .unwrap_or_else(|| format!("override.{image}"));
            crate::repo::check_name("image", &name).map(|_| (d, name))
        })
        .transpose()?
    };
    let layout_file = match &o.layout {
        Some(f) => Some(f.clone()),
        None => Some(o.dir.join(IMAGE_LAYOUT)).filter(|f| f.is_file()),
    };
    let layout = match layout_file {
        Some(f) => {
            let class = match &o.class {
                Some(c) => c.clone(),
                None => ClassName::new(&image)?,
            };
            let xml = std::fs::read_to_string(&f).map_err(|e| crate::error::Error::Io {
                path: f.clone(),
                source: e,
            })?;
            let c = layout::convert(&xml, &f.display().to_string(), &class)?;
            Some((f, class, c))
        }
        None => None,
    };
    Ok(ImportPlan {
        dir: o.dir.clone(),
        image,
        patterns,
        capture_exclude_files,
        update_exclude_file,
        overrides,
        layout,
    })
}

/// Captures the image and its overrides, and saves the template, as `plan` says.
pub fn run(
    repo: &mut Repository,
    plan: ImportPlan,
    progress: &dyn Progress,
) -> Result<ImportReport> {
    let message = format!("imported from SystemImager image {}", plan.dir.display());
    let mut src = LocalSource::new(&plan.dir, Excludes::new(&plan.patterns)?);
    let r = capture::getimage(
        repo,
        &mut src,
        &CaptureOptions {
            image: plan.image.clone(),
            message,
            edit: None,
            embedded_repos: true,
        },
        progress,
    )?;
    let mut warnings = r.warnings;
    let override_revision = match &plan.overrides {
        Some((dir, name)) => {
            let exact: Vec<String> = ALWAYS_EXCLUDED.iter().map(|s| s.to_string()).collect();
            let mut src = LocalSource::new(dir, Excludes::new(&exact)?);
            let o = capture::getimage(
                repo,
                &mut src,
                &CaptureOptions {
                    image: name.clone(),
                    message: format!("imported from SystemImager overrides {}", dir.display()),
                    edit: None,
                    embedded_repos: true,
                },
                progress,
            )?;
            warnings.extend(o.warnings);
            Some(o.revision.name())
        }
        None => None,
    };
    let template = match &plan.layout {
        Some((file, class, c)) => {
            let (v, _) = crate::template::store::save(
                repo,
                class,
                &c.text,
                &format!("converted from SystemImager layout {}", file.display()),
            )?;
            Some((class.to_string(), v))
        }
        None => None,
    };
    Ok(ImportReport {
        revision: r.revision.name(),
        id: r.revision.id.hex(),
        files: r.files,
        bytes: r.bytes,
        override_revision,
        template,
        warnings,
        plan,
    })
}
