//! `token` subcommands: the tokens `aurum serve` takes writes with.

use clap::{Args, Subcommand};

use super::{human_time, open, print_json, Global};

/// Tokens for the writes to `aurum serve` (node reports, install phases).
///
/// Reads of the repository stay open (caches and plain web servers serve them too); every
/// request that changes the server's state needs `Authorization: Bearer TOKEN`, else 401, and
/// 403 with a wrong, revoked or other node's token (logged with the client's address). An
/// admin token (`token create NAME`) may do every write; a node token only writes about its
/// node. Each node has a token derived from the server's key and its name (`token node
/// NODE`): the boot script hands it to the installer, which leaves it at
/// /var/lib/aurum-node/token on the node for its reports. The catalog keeps only hashes.
#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token and print it, once: it cannot be shown again (only its hash is kept).
    Create {
        /// Its name, for `token list` and `token revoke`: letters, digits, `.`, `_`, `-`.
        name: String,
        /// Make it a node's token: it may only report as NODE. Default: an admin token.
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        /// Print JSON: {"name", "node", "token"}.
        #[arg(long)]
        json: bool,
    },
    /// List the tokens made with `token create`: name, kind, when made, when revoked.
    List {
        /// Print JSON: [{"name", "node", "created", "revoked"}].
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token at once; with --node, the derived token of a node (the node then
    /// needs its new one, from `token node NODE`, in /var/lib/aurum-node/token).
    Revoke {
        /// The token's name (omit with --node).
        #[arg(required_unless_present = "node", conflicts_with = "node")]
        name: Option<String>,
        /// Revoke NODE's derived token instead.
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        /// Print JSON: {"revoked", "node"}.
        #[arg(long)]
        json: bool,
    },
    /// Print NODE's current derived token, for a node set up by hand: write it to the node's
    /// /var/lib/aurum-node/token (mode 0600).
    Node {
        node: String,
        /// Print JSON: {"node", "token"}.
        #[arg(long)]
        json: bool,
    },
}

pub fn token(g: &Global, a: TokenArgs) -> anyhow::Result<()> {
    let mut repo = open(g)?;
    let cat = &mut repo.catalog;
    match a.command {
        TokenCommand::Create { name, node, json } => {
            let token = cat.create_token(&name, node.as_deref())?;
            if json {
                return print_json(
                    &serde_json::json!({"name": name, "node": node, "token": token}),
                );
            }
            println!("{token}");
            let kind = node.map_or("an admin token".to_string(), |n| {
                format!("node {n}'s token")
            });
            super::say!("aurum: made {name}, {kind}; it is shown this once");
        }
        TokenCommand::List { json } => {
            let tokens = cat.tokens()?;
            if json {
                return print_json(&tokens);
            }
            if tokens.is_empty() {
                println!("no tokens (`aurum token create NAME` makes one)");
                return Ok(());
            }
            println!("{:<24} {:<20} {:<19} REVOKED", "NAME", "KIND", "CREATED");
            for t in tokens {
                let kind = t.node.map_or("admin".to_string(), |n| format!("node {n}"));
                let revoked = t.revoked.map_or("-".to_string(), human_time);
                println!(
                    "{:<24} {kind:<20} {:<19} {revoked}",
                    t.name,
                    human_time(t.created)
                );
            }
        }
        TokenCommand::Revoke { name, node, json } => {
            match (&name, &node) {
                (_, Some(n)) => cat.revoke_node_token(n)?,
                (Some(n), None) => cat.revoke_token(n)?,
                (None, None) => unreachable!("clap requires one"),
            }
            if json {
                return print_json(&serde_json::json!({"revoked": name, "node": node}));
            }
            match node {
                Some(n) => println!(
                    "revoked node {n}'s token; its new one (`aurum token node {n}`) goes in its /var/lib/aurum-node/token"
                ),
                None => println!("revoked token {}", name.unwrap_or_default()),
            }
        }
        TokenCommand::Node { node, json } => {
            let token = cat.node_token(&node)?;
            if json {
                return print_json(&serde_json::json!({"node": node, "token": token}));
            }
            println!("{token}");
        }
    }
    Ok(())
}
