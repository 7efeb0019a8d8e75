//! Hooks: administrator scripts run at fixed points of an install or an update.
//!
//! The layout is SystemImager's: a directory per stage (`pre-install/`, `post-install/`,
//! `pre-update/`, `post-update/`) holding executables named `NN<class>.<what>`, where class is
//! `all`, an image name, a group name or a hostname. A node runs the hooks whose class applies
//! to it, in SystemImager's order: all, then image, then group, then hostname, and by number
//! within each (so a host's hook can undo what a group's did). A hook that exits non-zero
//! stops the install, and its output is shown.
//!
//! Post-install hooks run chrooted in the freshly written root (with /dev, /proc and /sys bound
//! into it when the image has those directories), so they can call the image's own tools
//! (grub-install, ssh-keygen, systemd-machine-id-setup) as they would on the node.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{invalid, Error, IoContext, Result};
use crate::name::ClassName;

/// When a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    PreInstall,
    PostInstall,
    PreUpdate,
    PostUpdate,
}

impl Stage {
    pub fn dir(self) -> &'static str {
        match self {
            Stage::PreInstall => "pre-install",
            Stage::PostInstall => "post-install",
            Stage::PreUpdate => "pre-update",
            Stage::PostUpdate => "post-update",
        }
    }
}

/// Who the node is, for choosing hooks.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    pub image: String,
    pub group: Option<String>,
    pub hostname: String,
}

/// What a hook is told, as `AURUM_*` environment variables (the hooks page of the book lists
/// them): the same names for an install and an update, those that only an install knows left
/// out of an update.
#[derive(Clone, Debug, Default)]
pub struct HookEnv {
    /// Chooses the hooks, and gives `AURUM_IMAGE`, `AURUM_GROUP` and `AURUM_HOSTNAME`.
    pub who: Identity,
    /// `AURUM_ROOT`: the node's root as the hook sees it (`/` in a chroot).
    pub root: PathBuf,
    /// `AURUM_REVISION`: the full id of the revision being put in place.
    pub revision: String,
    /// `AURUM_SERVER`: where the revision comes from.
    pub server: String,
    /// `AURUM_CLASS`: the partition template's class (install only).
    pub class: Option<ClassName>,
    /// `AURUM_FIRMWARE`: `uefi` or `bios` (install only).
    pub firmware: Option<&'static str>,
    /// `AURUM_DISK`: the disk to boot from (post-install only).
    pub disk: Option<PathBuf>,
}

impl HookEnv {
    /// The variables, name and value.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("AURUM_ROOT", self.root.display().to_string()),
            ("AURUM_IMAGE", self.who.image.clone()),
            ("AURUM_REVISION", self.revision.clone()),
            ("AURUM_HOSTNAME", self.who.hostname.clone()),
            ("AURUM_GROUP", self.who.group.clone().unwrap_or_default()),
            ("AURUM_SERVER", self.server.clone()),
        ];
        if let Some(c) = &self.class {
            v.push(("AURUM_CLASS", c.to_string()));
        }
        if let Some(f) = self.firmware {
            v.push(("AURUM_FIRMWARE", f.into()));
        }
        if let Some(d) = &self.disk {
            v.push(("AURUM_DISK", d.display().to_string()));
        }
        v
    }
}

/// One hook file chosen to run.
#[derive(Clone, Debug)]
pub struct Hook {
    pub path: PathBuf,
    /// `post-install/10all.hostname`.
    pub name: String,
    pub number: u32,
    pub class: String,
    pub what: String,
    rank: u8,
}

/// `NN<class>.<what>` -> (NN, class, what).
pub fn parse_name(name: &str) -> Option<(u32, &str, &str)> {
    let digits = name.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let number = name[..digits].parse().ok()?;
    let (class, what) = name[digits..].split_once('.')?;
    if class.is_empty() || what.is_empty() {
        return None;
    }
    Some((number, class, what))
}

/// The hooks of `stage` under `dir` that apply to `who`, in the order they run.
pub fn select(dir: &Path, stage: Stage, who: &Identity) -> Result<Vec<Hook>> {
    let sdir = dir.join(stage.dir());
    let rd = match std::fs::read_dir(&sdir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(&sdir),
    };
    let mut hooks = Vec::new();
    for e in rd {
        let e = e.at(&sdir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        // Editor backups and disabled hooks (`.10all.x`, `10all.x~`, `10all.x.disabled`).
        if name.starts_with('.') || name.ends_with('~') || name.ends_with(".disabled") {
            continue;
        }
        let Some((number, class, what)) = parse_name(&name) else {
            log::warn!(
                "{}: not named NN<class>.<what>; not run",
                e.path().display()
            );
            continue;
        };
        let rank = if class == "all" {
            0
        } else if class == who.image {
            1
        } else if Some(class) == who.group.as_deref() {
            2
        } else if class == who.hostname {
            3
        } else {
            continue;
        };
        let path = e.path();
        let meta = std::fs::metadata(&path).at(&path)?;
        if !meta.is_file() {
            continue;
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(invalid(format!(
                "hook {} is not executable: `chmod +x` it (or rename it to end in .disabled)",
                path.display()
            )));
        }
        hooks.push(Hook {
            name: format!("{}/{name}", stage.dir()),
            path,
            number,
            class: class.to_string(),
            what: what.to_string(),
            rank,
        });
    }
    hooks.sort_by(|a, b| (a.rank, a.number, &a.name).cmp(&(b.rank, b.number, &b.name)));
    Ok(hooks)
}

/// Runs one hook with `env`; chrooted in `chroot` when given. Returns its output; a failure is
/// an error holding the output.
pub fn run(hook: &Hook, env: &HookEnv, chroot: Option<&Path>) -> Result<String> {
    let mut cmd;
    let mut copied = None;
    match chroot {
        Some(root) => {
            // The hook must be inside the root to run there: copy it to /tmp of the target.
            let tmp = root.join("tmp");
            std::fs::create_dir_all(&tmp).at(&tmp)?;
            let times = std::fs::metadata(&tmp).ok().and_then(|m| {
                Some(
                    std::fs::FileTimes::new()
                        .set_accessed(m.accessed().ok()?)
                        .set_modified(m.modified().ok()?),
                )
            });
            let inside = format!(
                "/tmp/.aurum-hook-{}",
                hook.path.file_name().unwrap_or_default().to_string_lossy()
            );
            let dst = root.join(inside.trim_start_matches('/'));
            std::fs::copy(&hook.path, &dst).at(&dst)?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o700)).at(&dst)?;
            cmd = Command::new("chroot");
            cmd.arg(root).arg(&inside);
            copied = Some((dst, times));
        }
        None => cmd = Command::new(&hook.path),
    }
    cmd.envs(env.vars());
    let out = cmd.output();
    if let Some((c, times)) = copied {
        let _ = std::fs::remove_file(&c);
        // Leave /tmp as the image has it (its mtime is part of the revision).
        if let (Some(t), Some(dir)) = (times, c.parent()) {
            let _ = std::fs::File::open(dir).and_then(|f| f.set_times(t));
        }
    }
    let out = out.map_err(|e| Error::Tool(format!("hook {}: cannot run it: {e}", hook.name)))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text += &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(Error::Tool(format!(
            "hook {} failed ({}); its output:\n{}",
            hook.name,
            out.status,
            text.trim_end()
        )));
    }
    Ok(text)
}

/// Runs every hook of `stage` under `dir` that applies to `env.who`, in order; stops at the
/// first failure. Returns each hook's name and output.
pub fn run_stage(
    dir: &Path,
    stage: Stage,
    env: &HookEnv,
    chroot: Option<&Path>,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for h in select(dir, stage, &env.who)? {
        let text = run(&h, env, chroot)?;
        out.push((h.name, text));
    }
    Ok(out)
}

/// The hooks shipped with aurum, compiled in: `(stage dir/name, script)`. Used when an install
/// is given no hooks directory and the repository holds no `hooks` image.
pub const SHIPPED: &[(&str, &str)] = &[
    (
        "post-install/10all.hostname",
        include_str!("../../hooks/post-install/10all.hostname"),
    ),
    (
        "post-install/20all.machine-id",
        include_str!("../../hooks/post-install/20all.machine-id"),
    ),
    (
        "post-install/30all.ssh-host-keys",
        include_str!("../../hooks/post-install/30all.ssh-host-keys"),
    ),
    (
        "post-install/40all.network-identity",
        include_str!("../../hooks/post-install/40all.network-identity"),
    ),
    (
        "post-install/90all.bootloader",
        include_str!("../../hooks/post-install/90all.bootloader"),
    ),
];

/// Writes the shipped hooks into `dir` (a temporary directory).
pub fn write_shipped(dir: &Path) -> Result<()> {
    for (name, text) in SHIPPED {
        let p = dir.join(name);
        let parent = p.parent().expect("stage dir");
        std::fs::create_dir_all(parent).at(parent)?;
        std::fs::write(&p, text).at(&p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).at(&p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_all_image_group_host_then_number() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("post-install");
        std::fs::create_dir_all(&d).unwrap();
        for n in [
            "50n01.z",
            "10all.b",
            "05compute.c",
            "01racka.d",
            "02all.a",
            "10other.x",
            "README",
        ] {
            let p = d.join(n);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let who = Identity {
            image: "compute".into(),
            group: Some("racka".into()),
            hostname: "n01".into(),
        };
        let names: Vec<String> = select(t.path(), Stage::PostInstall, &who)
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect();
        assert_eq!(
            names,
            [
                "post-install/02all.a",
                "post-install/10all.b",
                "post-install/05compute.c",
                "post-install/01racka.d",
                "post-install/50n01.z"
            ]
        );
    }

    #[test]
    fn every_file_in_hooks_is_shipped_as_is() {
        let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks");
        let mut found = 0;
        for stage in ["pre-install", "post-install", "pre-update", "post-update"] {
            let Ok(rd) = std::fs::read_dir(top.join(stage)) else {
                continue;
            };
            for e in rd {
                let e = e.unwrap();
                let name = format!("{stage}/{}", e.file_name().to_string_lossy());
                let text = std::fs::read_to_string(e.path()).unwrap();
                let shipped = SHIPPED.iter().find(|(n, _)| *n == name);
                assert_eq!(shipped.map(|s| s.1), Some(text.as_str()), "{name}");
                assert_ne!(
                    e.metadata().unwrap().permissions().mode() & 0o111,
                    0,
                    "{name}"
                );
                found += 1;
            }
        }
        assert_eq!(found, SHIPPED.len());
    }

    #[test]
    fn shipped_hooks_are_named_and_are_shell_scripts() {
        for (name, text) in SHIPPED {
            let file = name.rsplit('/').next().unwrap();
            assert!(parse_name(file).is_some(), "{name}");
            assert!(text.starts_with("#!/bin/sh"), "{name}");
        }
    }
}
