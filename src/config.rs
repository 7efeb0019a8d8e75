//! Configuration files: `aurum.toml` for the image server, `node.toml` for a node.
//!
//! Both live in one directory, /etc/aurum unless `AURUM_CONFIG_DIR` names another (tests and
//! chroots use it so that nothing reads the host's /etc). A missing file is the same as an
//! empty one: every setting has a default or is given on the command line. A setting is taken
//! from, in order of precedence: the command line's flag, the environment (`AURUM_REPO`,
//! `AURUM_SERVER`), the file, the built-in default. Each value remembers where it came from
//! ([`Origin`]), so that `aurum config show` can say why it is what it is.
//!
//! The files are TOML with kebab-case keys and unknown keys refused (a misspelt key silently
//! ignored is a setting the administrator believes in and does not have), as the partition
//! templates are. SystemImager keeps a node's server and image in /etc/systemimager; node.toml
//! is that file for aurum.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Error, Result};

/// The configuration directory when `AURUM_CONFIG_DIR` is not set.
pub const DEFAULT_DIR: &str = "/etc/aurum";
/// The environment variable naming another configuration directory.
pub const DIR_ENV: &str = "AURUM_CONFIG_DIR";
/// The environment variable naming the repository directory (over aurum.toml's).
pub const REPO_ENV: &str = "AURUM_REPO";
/// The environment variable naming the image server (over node.toml's).
pub const SERVER_ENV: &str = "AURUM_SERVER";
/// The environment variable holding the token for a node's or installer's writes.
pub const TOKEN_ENV: &str = "AURUM_TOKEN";
/// The server-side file's name inside the directory.
pub const SERVER_FILE: &str = "aurum.toml";
/// The node-side file's name inside the directory.
pub const NODE_FILE: &str = "node.toml";
/// The repository when nothing names one.
pub const DEFAULT_REPO: &str = "/var/lib/aurum";
/// Where `aurum serve` listens when nothing says otherwise.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8035";

/// aurum.toml: the image server's settings.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerFile {
    /// The repository directory (`--repo`, `AURUM_REPO`).
    pub repository: Option<PathBuf>,
    /// The address and port `aurum serve` listens on (`serve --listen`).
    pub listen: Option<String>,
    /// Where nodes reach this server (`pxe config --server`, `pxe tftp --server`).
    pub url: Option<String>,
    /// Public keys whose signatures `verify` and `pull` accept (OpenSSH lines, or absolute
    /// paths of files of them). With any, `pull` refuses revisions no trusted key signed.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Keys no longer accepted even when listed in `trusted-keys` (lines, paths or `SHA256:`
    /// fingerprints).
    #[serde(default)]
    pub revoked_keys: Vec<String>,
}

/// One image server or several, tried in order.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Servers {
    One(String),
    Several(Vec<String>),
}

impl Servers {
    /// The servers, in the order to try them.
    pub fn list(&self) -> Vec<String> {
        match self {
            Servers::One(s) => vec![s.clone()],
            Servers::Several(v) => v.clone(),
        }
    }
}

/// node.toml: a node's settings for `updateclient` and `rollback`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeFile {
    /// The image server(s): `server = "http://master:8035"`, or a list tried in order.
    pub server: Option<Servers>,
    /// The revision the node follows (`updateclient --image`).
    pub image: Option<String>,
    /// Exclude rules, after the command line's and before the defaults.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Files of exclude rules (rsync --exclude-from syntax).
    #[serde(default)]
    pub exclude_file: Vec<PathBuf>,
    /// Override images laid over the image on every update (`updateclient --override`).
    #[serde(default)]
    pub overrides: Vec<String>,
    /// The hooks directory for updates (`updateclient --hooks`).
    pub hooks: Option<PathBuf>,
    /// The node's group, for choosing hooks (`updateclient --group`).
    pub group: Option<String>,
    /// The HTTP proxy requests go through (`updateclient --proxy`), when the environment
    /// names none (`http_proxy`); `""`: none.
    pub proxy: Option<String>,
    /// Hosts reached without the proxy, as curl's `no_proxy` (when the environment has
    /// none): `no-proxy = "master,10.0.0.0/8,.cluster"`.
    pub no_proxy: Option<String>,
    /// The file holding the node's token for its reports (default: the node's
    /// /var/lib/aurum-node/token, which `aurum install` writes).
    pub token_file: Option<PathBuf>,
    /// The CA certificate (PEM) an https:// server's certificate must be signed by, instead of
    /// the system's trust store.
    pub ca: Option<PathBuf>,
    /// Public keys a revision must be signed by before the node writes it (OpenSSH lines, or
    /// absolute paths of files of them). None: revisions are not checked.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Keys no longer accepted even when listed in `trusted-keys` (lines, paths or `SHA256:`
    /// fingerprints).
    #[serde(default)]
    pub revoked_keys: Vec<String>,
    /// Refuse a revision whose newest trusted signature is older than this (`30d`, `12h`,
    /// `90m`, `45s`): a server replaying old state (a freeze attack); the master signs its
    /// heads again (`aurum sign`) more often than that.
    pub max_age: Option<String>,
}

/// Seconds in an age written as a number and a unit: `30d`, `12h`, `90m`, `45s`.
pub fn parse_age(text: &str) -> Result<i64> {
    let t = text.trim();
    let unit = t.chars().last().unwrap_or(' ');
    let per = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => 0,
    };
    let number = t
        .strip_suffix(unit)
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n >= 0 && per > 0);
    number.map(|n| n.saturating_mul(per)).ok_or_else(|| {
        invalid(format!(
            "max-age `{text}` is not an age: write a number and a unit, d, h, m or s (`30d`)"
        ))
    })
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "source", content = "from", rename_all = "kebab-case")]
pub enum Origin {
    /// A command-line flag (its spelling, `--repo`).
    Flag(String),
    /// An environment variable (its name).
    Env(String),
    /// A configuration file (its path).
    File(PathBuf),
    /// aurum's built-in default.
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag(n) => write!(f, "flag {n}"),
            Origin::Env(n) => write!(f, "environment {n}"),
            Origin::File(p) => write!(f, "file {}", p.display()),
            Origin::Default => write!(f, "default"),
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setting<T> {
    pub value: T,
    #[serde(flatten)]
    pub origin: Origin,
}

impl<T> Setting<T> {
    pub fn new(value: T, origin: Origin) -> Setting<T> {
        Setting { value, origin }
    }
}

/// A non-empty environment variable (an empty one is unset, as a shell's `VAR= cmd` means).
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The first of flag, environment, file and default that has a value.
pub fn pick<T>(
    flag: Option<(T, &str)>,
    env: Option<(T, &str)>,
    file: Option<(T, &Path)>,
    default: Option<T>,
) -> Option<Setting<T>> {
    flag.map(|(v, n)| Setting::new(v, Origin::Flag(n.to_string())))
        .or_else(|| env.map(|(v, n)| Setting::new(v, Origin::Env(n.to_string()))))
        .or_else(|| file.map(|(v, p)| Setting::new(v, Origin::File(p.to_path_buf()))))
        .or_else(|| default.map(|v| Setting::new(v, Origin::Default)))
}

/// Both files of a configuration directory, read.
#[derive(Debug, Default, Clone)]
pub struct Config {
    /// The directory and where it came from (`AURUM_CONFIG_DIR` or the default).
    pub dir: PathBuf,
    pub dir_origin: Option<Origin>,
    /// aurum.toml's path, when it exists.
    pub server_path: Option<PathBuf>,
    pub server: ServerFile,
    /// node.toml's path, when it exists.
    pub node_path: Option<PathBuf>,
    pub node: NodeFile,
}

impl Config {
    /// Reads the files of the directory `AURUM_CONFIG_DIR` names, else of /etc/aurum.
    pub fn load() -> Result<Config> {
        let (dir, origin) = match env_var(DIR_ENV) {
            Some(d) => (PathBuf::from(d), Origin::Env(DIR_ENV.to_string())),
            None => (PathBuf::from(DEFAULT_DIR), Origin::Default),
        };
        Config::load_from(&dir, origin)
    }

    /// Reads the files of `dir`; a missing file is an empty one.
    pub fn load_from(dir: &Path, origin: Origin) -> Result<Config> {
        let (server_path, server) = read_file(&dir.join(SERVER_FILE))?;
        let (node_path, node) = read_file(&dir.join(NODE_FILE))?;
        Ok(Config {
            dir: dir.to_path_buf(),
            dir_origin: Some(origin),
            server_path,
            server,
            node_path,
            node,
        })
    }

    /// aurum.toml's value of a setting, with its path for [`pick`].
    pub fn server_value<'a, T>(
        &'a self,
        get: impl Fn(&'a ServerFile) -> Option<T>,
    ) -> Option<(T, &'a Path)> {
        let path = self.server_path.as_deref()?;
        get(&self.server).map(|v| (v, path))
    }

    /// node.toml's value of a setting, with its path for [`pick`].
    pub fn node_value<'a, T>(
        &'a self,
        get: impl Fn(&'a NodeFile) -> Option<T>,
    ) -> Option<(T, &'a Path)> {
        let path = self.node_path.as_deref()?;
        get(&self.node).map(|v| (v, path))
    }

    /// The repository directory: `flag` (`--repo`), else `AURUM_REPO`, else aurum.toml's
    /// `repository`, else /var/lib/aurum.
    pub fn repository(&self, flag: Option<PathBuf>) -> Setting<PathBuf> {
        pick(
            flag.map(|p| (p, "--repo")),
            env_var(REPO_ENV).map(|v| (PathBuf::from(v), REPO_ENV)),
            self.server_value(|s| s.repository.clone()),
            Some(PathBuf::from(DEFAULT_REPO)),
        )
        .expect("a default is given")
    }

    /// The image server(s) a node uses: `flag` (`--server`, repeatable), else `AURUM_SERVER`
    /// (several separated by commas or spaces), else
    /// node.toml's `server`; none when none is named.
    pub fn servers(&self, flag: Vec<String>) -> Option<Setting<Vec<String>>> {
        pick(
            (!flag.is_empty()).then_some((flag, "--server")),
            env_var(SERVER_ENV).map(|v| {
                (
                    v.split(|c: char| c == ',' || c.is_whitespace())
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect(),
                    SERVER_ENV,
                )
            }),
            self.node_value(|n| n.server.as_ref().map(Servers::list)),
            None,
        )
    }

    /// The token a node or an installer sends with its writes: `AURUM_TOKEN`, else the file
    /// `flag` (`--token-file`), else node.toml's `token-file`, else `default` (the node's
    /// token file) when it exists. The token's text is trimmed and must be printable ASCII.
    pub fn token(&self, flag: Option<PathBuf>, default: Option<&Path>) -> Result<Option<String>> {
        let check = |t: String, from: &dyn std::fmt::Display| -> Result<Option<String>> {
            let t = t.trim().to_string();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::Invalid(format!(
                    "the token from {from} is not one (printable ASCII without spaces): copy it \
                     from `aurum token create` or `aurum token node NODE`"
                )));
            }
            Ok(Some(t))
        };
        if let Some(t) = env_var(TOKEN_ENV) {
            return check(t, &format!("environment {TOKEN_ENV}"));
        }
        let file = pick(
            flag.map(|f| (f, "--token-file")),
            None,
            self.node_value(|n| n.token_file.clone()),
            default.filter(|d| d.exists()).map(Path::to_path_buf),
        );
        match file {
            None => Ok(None),
            Some(f) => {
                let text = std::fs::read_to_string(&f.value).map_err(|e| {
                    Error::Invalid(format!(
                        "cannot read the token file {} ({}): {e}",
                        f.value.display(),
                        f.origin
                    ))
                })?;
                check(text, &f.value.display())
            }
        }
    }

    /// The revision a node follows: `flag` (`--image`), else node.toml's `image`.
    pub fn image(&self, flag: Option<String>) -> Option<Setting<String>> {
        pick(
            flag.map(|s| (s, "--image")),
            None,
            self.node_value(|n| n.image.clone()),
            None,
        )
    }

    /// Where `aurum serve` listens: `flag` (`--listen`), else aurum.toml's `listen`, else
    /// 0.0.0.0:8035.
    pub fn listen(&self, flag: Option<String>) -> Setting<String> {
        pick(
            flag.map(|s| (s, "--listen")),
            None,
            self.server_value(|s| s.listen.clone()),
            Some(DEFAULT_LISTEN.to_string()),
        )
        .expect("a default is given")
    }

    /// Where nodes reach the server, for PXE files: `flag` (`--server`), else aurum.toml's
    /// `url`; none when neither names it.
    pub fn url(&self, flag: Option<String>) -> Option<Setting<String>> {
        pick(
            flag.map(|s| (s, "--server")),
            None,
            self.server_value(|s| s.url.clone()),
            None,
        )
    }
}

/// Reads and parses one TOML file; a missing file is the default value and no path.
fn read_file<T: Default + for<'de> Deserialize<'de>>(path: &Path) -> Result<(Option<PathBuf>, T)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, T::default())),
        Err(e) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    let value = toml::from_str(&text).map_err(|e| {
        invalid(format!(
            "{}: {}; fix the file (the book's Configuration chapter lists its keys), or point {DIR_ENV} at another directory",
            path.display(),
            e.to_string().trim_end()
        ))
    })?;
    Ok((Some(path.to_path_buf()), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_flag_env_file_default() {
        let p = Path::new("/etc/aurum/aurum.toml");
        let s = pick(Some((1, "--x")), Some((2, "X")), Some((3, p)), Some(4)).unwrap();
        assert_eq!(s.origin, Origin::Flag("--x".into()));
        let s = pick(None, Some((2, "X")), Some((3, p)), Some(4)).unwrap();
        assert_eq!((s.value, s.origin), (2, Origin::Env("X".into())));
        let s = pick(None, None, Some((3, p)), Some(4)).unwrap();
        assert_eq!((s.value, s.origin), (3, Origin::File(p.into())));
        let s = pick::<i32>(None, None, None, Some(4)).unwrap();
        assert_eq!((s.value, s.origin), (4, Origin::Default));
        assert!(pick::<i32>(None, None, None, None).is_none());
    }

    #[test]
    fn node_file_takes_one_server_or_several() {
        let one: NodeFile = toml::from_str("server = \"http://a:8035\"").unwrap();
        assert_eq!(one.server.unwrap().list(), vec!["http://a:8035"]);
        let two: NodeFile =
            toml::from_str("server = [\"http://a:8035\", \"http://b:8035\"]\nimage = \"c\"")
                .unwrap();
        assert_eq!(two.server.unwrap().list().len(), 2);
        assert_eq!(two.image.as_deref(), Some("c"));
    }

    #[test]
    fn ages_have_units() {
        assert_eq!(parse_age("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_age("3s").unwrap(), 3);
        assert_eq!(parse_age(" 2h ").unwrap(), 7_200);
        for bad in ["30", "d", "-1d", "3 weeks", ""] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(NODE_FILE), "sever = \"http://a\"\n").unwrap();
        let e = Config::load_from(dir.path(), Origin::Default)
            .unwrap_err()
            .to_string();
        assert!(e.contains("node.toml") && e.contains("sever"), "{e}");
    }
}
