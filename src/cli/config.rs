//! `config show`: the settings in effect and where each came from.

use aurum::config::{Config, Origin, Setting};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::{print_json, Global};

/// The configuration files: /etc/aurum/aurum.toml (the image server) and
/// /etc/aurum/node.toml (a node).
///
/// A setting comes from its flag, else its environment variable (AURUM_REPO, AURUM_SERVER),
/// else the file, else the default. AURUM_CONFIG_DIR names another directory than
/// /etc/aurum. The keys are in the book's Configuration chapter.
#[derive(Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Subcommand)]
enum ConfigCommand {
    Show(ShowArgs),
}

/// Print the settings in effect, each with where it came from (flag, environment, file or
/// default); settings nothing gives are left out.
#[derive(Args)]
struct ShowArgs {
    /// Print JSON: {"settings": {NAME: {"value", "source", "from"}}, "files": [...]}.
    #[arg(long)]
    json: bool,
}

/// One line of `config show`.
#[derive(Serialize)]
struct Row {
    key: &'static str,
    #[serde(flatten)]
    setting: Setting<serde_json::Value>,
}

fn row<T: Serialize>(key: &'static str, s: Setting<T>) -> Row {
    Row {
        key,
        setting: Setting::new(serde_json::to_value(&s.value).unwrap_or_default(), s.origin),
    }
}

/// Settings of node.toml that are lists: shown when the file gives them.
fn node_lists(c: &Config, rows: &mut Vec<Row>) {
    let Some(path) = &c.node_path else { return };
    let file = |v: serde_json::Value| Setting::new(v, Origin::File(path.clone()));
    let n = &c.node;
    let lists: [(&'static str, serde_json::Value, bool); 10] = [
        (
            "exclude",
            serde_json::json!(n.exclude),
            n.exclude.is_empty(),
        ),
        (
            "exclude-file",
            serde_json::json!(n.exclude_file),
            n.exclude_file.is_empty(),
        ),
        (
            "overrides",
            serde_json::json!(n.overrides),
            n.overrides.is_empty(),
        ),
        ("hooks", serde_json::json!(n.hooks), n.hooks.is_none()),
        ("group", serde_json::json!(n.group), n.group.is_none()),
        (
            "trusted-keys",
            serde_json::json!(n.trusted_keys),
            n.trusted_keys.is_empty(),
        ),
        (
            "revoked-keys",
            serde_json::json!(n.revoked_keys),
            n.revoked_keys.is_empty(),
        ),
        ("max-age", serde_json::json!(n.max_age), n.max_age.is_none()),
        ("proxy", serde_json::json!(n.proxy), n.proxy.is_none()),
        (
            "no-proxy",
            serde_json::json!(n.no_proxy),
            n.no_proxy.is_none(),
        ),
    ];
    for (key, v, empty) in lists {
        if !empty {
            rows.push(Row {
                key,
                setting: file(v),
            });
        }
    }
}

pub fn exec(g: &Global, a: ConfigArgs) -> anyhow::Result<()> {
    let ConfigCommand::Show(a) = a.command;
    let c = &g.config;
    let mut rows = vec![
        row(
            "config-dir",
            Setting::new(
                c.dir.clone(),
                c.dir_origin.clone().unwrap_or(Origin::Default),
            ),
        ),
        row("repository", g.repo_setting()),
        row("listen", c.listen(None)),
    ];
    if let Some(u) = c.url(None) {
        rows.push(row("url", u));
    }
    if let Some(s) = c.servers(Vec::new()) {
        rows.push(row("server", s));
    }
    if let Some(i) = c.image(None) {
        rows.push(row("image", i));
    }
    node_lists(c, &mut rows);
    let files: Vec<_> = [&c.server_path, &c.node_path]
        .into_iter()
        .flatten()
        .collect();
    if a.json {
        let settings: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|r| {
                (
                    r.key.to_string(),
                    serde_json::to_value(&r.setting).unwrap_or_default(),
                )
            })
            .collect();
        return print_json(&serde_json::json!({ "settings": settings, "files": files }));
    }
    for r in &rows {
        let v = match &r.setting.value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(", "),
            other => other.to_string(),
        };
        println!("{:<12} {v}  ({})", r.key, r.setting.origin);
    }
    if files.is_empty() {
        super::say!(
            "aurum: no configuration file in {} ({} or {} would be read)",
            c.dir.display(),
            aurum::config::SERVER_FILE,
            aurum::config::NODE_FILE
        );
    }
    Ok(())
}
