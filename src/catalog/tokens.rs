//! Tokens in the catalog: the ones `aurum token create` made (by hash, never their text), the
//! key node tokens are derived with, and each node's token generation. [`Catalog::authorize`]
//! is the one place `aurum serve` asks whether a write may happen. The token text and the
//! derivation are [`crate::format::token`].

use std::io::Read;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{now, Catalog};
use crate::error::{invalid, Error, Result};
use crate::format::token;

/// A created token as `aurum token list` shows it (its text is never kept).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TokenInfo {
    pub name: String,
    /// The node it may report as; `None`: an admin token, which may do every write.
    pub node: Option<String>,
    pub created: i64,
    /// When it was revoked; `None` while it is valid.
    pub revoked: Option<i64>,
}

/// Who a request's token says it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// An admin token, by name: every write.
    Admin(String),
    /// A node's token (derived or created for it): writes about that node only.
    Node(String),
}

/// Why a token is refused (the server answers 403 and logs it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No token of this catalog, nor the node token of the node the request is about.
    Unknown,
    /// A created token that was revoked, by name.
    Revoked(String),
    /// A valid node token used for another node's write.
    OtherNode { token_node: String, wanted: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Refusal::Unknown => write!(
                f,
                "the token is not valid here (unknown, or an old node token)"
            ),
            Refusal::Revoked(name) => write!(f, "token `{name}` was revoked"),
            Refusal::OtherNode { token_node, wanted } => {
                write!(
                    f,
                    "the token of node {token_node} cannot write for node {wanted}"
                )
            }
        }
    }
}

/// 32 bytes from the kernel's random source.
fn random32() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| invalid(format!("cannot read /dev/urandom for a token: {e}")))?;
    Ok(b)
}

impl Catalog {
    /// Makes a token called `name` (admin, or for `node`); returns its text, shown once.
    pub fn create_token(&mut self, name: &str, node: Option<&str>) -> Result<String> {
        crate::name::check("token", name)?;
        if let Some(n) = node {
            crate::name::check("node", n)?;
        }
        let exists: bool = self.conn.query_row(
            "SELECT COUNT(*) > 0 FROM tokens WHERE name = ?1",
            [name],
            |r| r.get(0),
        )?;
        if exists {
            return Err(invalid(format!(
                "there is already a token `{name}`: pick another name (`aurum token list`)"
            )));
        }
        let text = token::created(&random32()?);
        self.conn.execute(
            "INSERT INTO tokens(name, hash, node, created) VALUES (?1, ?2, ?3, ?4)",
            params![name, &token::hash(&text)[..], node, now()],
        )?;
        let whose = node.map_or("admin".to_string(), |n| format!("node {n}"));
        self.event("token", None, &format!("created token {name} ({whose})"))?;
        Ok(text)
    }

    /// Every created token, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let mut st = self
            .conn
            .prepare("SELECT name, node, created, revoked FROM tokens ORDER BY created, name")?;
        let rows = st.query_map([], |r| {
            Ok(TokenInfo {
                name: r.get(0)?,
                node: r.get(1)?,
                created: r.get(2)?,
                revoked: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Revokes the created token `name`; at once, for every server of this catalog.
    pub fn revoke_token(&mut self, name: &str) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE tokens SET revoked = ?2 WHERE name = ?1 AND revoked IS NULL",
            params![name, now()],
        )?;
        if n == 0 {
            let known = self.tokens()?.into_iter().any(|t| t.name == name);
            return Err(if known {
                invalid(format!("token `{name}` is revoked already"))
            } else {
                Error::NotFound(format!("no token `{name}` (`aurum token list`)"))
            });
        }
        self.event("token", None, &format!("revoked token {name}"))
    }

    /// The key node tokens are derived with, made on first use.
    fn token_key(&self) -> Result<[u8; token::KEY_LEN]> {
        let have: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT key FROM token_key WHERE id = 1", [], |r| r.get(0))
            .optional()?;
        if let Some(k) = have.and_then(|k| <[u8; token::KEY_LEN]>::try_from(k).ok()) {
            return Ok(k);
        }
        let k = random32()?;
        // Two servers making it at once: the first one's stays, and both read it back.
        self.conn.execute(
            "INSERT OR IGNORE INTO token_key(id, key) VALUES (1, ?1)",
            [&k[..]],
        )?;
        let k: Vec<u8> =
            self.conn
                .query_row("SELECT key FROM token_key WHERE id = 1", [], |r| r.get(0))?;
        <[u8; token::KEY_LEN]>::try_from(k)
            .map_err(|_| invalid("the catalog's token key is damaged"))
    }

    fn node_generation(&self, node: &str) -> Result<u32> {
        Ok(self
            .conn
            .query_row(
                "SELECT generation FROM node_token_generations WHERE node = ?1",
                [node],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// The current token of `node` (the boot script gives it to the installer; `aurum token
    /// node` prints it for a node set up by hand).
    pub fn node_token(&self, node: &str) -> Result<String> {
        crate::name::check("node", node)?;
        let key = self.token_key()?;
        Ok(token::node_token(&key, node, self.node_generation(node)?))
    }

    /// Revokes `node`'s current token: the next one ([`Catalog::node_token`]) replaces it.
    pub fn revoke_node_token(&mut self, node: &str) -> Result<()> {
        crate::name::check("node", node)?;
        self.conn.execute(
            "INSERT INTO node_token_generations(node, generation, revoked) VALUES (?1, 1, ?2)
             ON CONFLICT(node) DO UPDATE SET generation = generation + 1, revoked = ?2",
            params![node, now()],
        )?;
        self.event("token", None, &format!("revoked the token of node {node}"))
    }

    /// Whether `presented` may write about `node` (`None`: a write about no node, which only
    /// an admin token may do).
    pub fn authorize(
        &mut self,
        presented: &str,
        node: Option<&str>,
    ) -> Result<std::result::Result<Access, Refusal>> {
        let found: Option<(String, Option<String>, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT name, node, revoked FROM tokens WHERE hash = ?1",
                [&token::hash(presented)[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let access = match found {
            Some((name, _, Some(_))) => return Ok(Err(Refusal::Revoked(name))),
            Some((name, None, None)) => return Ok(Ok(Access::Admin(name))),
            Some((_, Some(n), None)) => Access::Node(n),
            None => match node {
                Some(n) if presented.starts_with(token::NODE_PREFIX) => {
                    if !token::same(presented, &self.node_token(n)?) {
                        return Ok(Err(Refusal::Unknown));
                    }
                    Access::Node(n.to_string())
                }
                _ => return Ok(Err(Refusal::Unknown)),
            },
        };
        let Access::Node(token_node) = &access else {
            unreachable!("admin tokens returned above")
        };
        match node {
            Some(wanted) if wanted == token_node => Ok(Ok(access)),
            wanted => Ok(Err(Refusal::OtherNode {
                token_node: token_node.clone(),
                wanted: wanted.unwrap_or("(none: an admin write)").to_string(),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authorize_what_they_should() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&dir.path().join("aurum.db")).unwrap();
        let admin = c.create_token("ops", None).unwrap();
        let n01 = c.create_token("n01-spare", Some("n01")).unwrap();
        assert!(c.create_token("ops", None).is_err());
        assert_eq!(
            c.authorize(&admin, None).unwrap(),
            Ok(Access::Admin("ops".into()))
        );
        assert_eq!(
            c.authorize(&admin, Some("n02")).unwrap(),
            Ok(Access::Admin("ops".into()))
        );
        assert_eq!(
            c.authorize(&n01, Some("n01")).unwrap(),
            Ok(Access::Node("n01".into()))
        );
        assert!(matches!(
            c.authorize(&n01, Some("n02")).unwrap(),
            Err(Refusal::OtherNode { .. })
        ));
        assert!(c.authorize(&n01, None).unwrap().is_err());
        let derived = c.node_token("n03").unwrap();
        assert_eq!(derived, c.node_token("n03").unwrap());
        assert_eq!(
            c.authorize(&derived, Some("n03")).unwrap(),
            Ok(Access::Node("n03".into()))
        );
        assert_eq!(
            c.authorize(&derived, Some("n04")).unwrap(),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            c.authorize("aurum_tok_nope", None).unwrap(),
            Err(Refusal::Unknown)
        );
        c.revoke_node_token("n03").unwrap();
        assert_eq!(
            c.authorize(&derived, Some("n03")).unwrap(),
            Err(Refusal::Unknown)
        );
        let next = c.node_token("n03").unwrap();
        assert_ne!(next, derived);
        assert!(c.authorize(&next, Some("n03")).unwrap().is_ok());
        c.revoke_token("ops").unwrap();
        assert_eq!(
            c.authorize(&admin, None).unwrap(),
            Err(Refusal::Revoked("ops".into()))
        );
        assert!(c.revoke_token("ops").is_err() && c.revoke_token("nope").is_err());
        assert_eq!(c.tokens().unwrap().len(), 2);
    }
}
