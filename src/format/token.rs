//! Tokens that let a client change state on `aurum serve` (`Authorization: Bearer TOKEN`):
//! their text, how the catalog stores them, and how a node's token is derived.
//!
//! Two kinds. A *created* token (`aurum token create`) is 32 random bytes written as
//! `aurum_tok_` and 64 hex digits; the catalog keeps only its BLAKE3 hash, so a copy of the
//! catalog gives no token away. A *node* token is `aurum_node_` and the hex of
//! `BLAKE3-keyed(server key, "aurum node token v1\0" NODE "\0" GENERATION)`: the server
//! recomputes it from the node name a request reports as, so it needs no row per node, the
//! boot script can hand it to an installer, and a node can only report as itself. Revoking a
//! node's token bumps its generation.

use crate::error::{invalid, Result};

/// The text every created token starts with.
pub const CREATED_PREFIX: &str = "aurum_tok_";
/// The text every node token starts with.
pub const NODE_PREFIX: &str = "aurum_node_";
/// Bytes of the server's node-token key.
pub const KEY_LEN: usize = 32;

/// The BLAKE3 hash of a token: what the catalog keeps.
pub fn hash(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// A created token from 32 random bytes.
pub fn created(random: &[u8; 32]) -> String {
    format!("{CREATED_PREFIX}{}", hex(random))
}

/// The token of `node` at `generation` under the server's `key`.
pub fn node_token(key: &[u8; KEY_LEN], node: &str, generation: u32) -> String {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"aurum node token v1\0");
    h.update(node.as_bytes());
    h.update(b"\0");
    h.update(generation.to_string().as_bytes());
    format!("{NODE_PREFIX}{}", hex(h.finalize().as_bytes()))
}

/// Whether two tokens are equal, in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    // Comparing the hashes: equal-length inputs, and BLAKE3's `Hash` compares in constant time.
    blake3::hash(a.as_bytes()) == blake3::hash(b.as_bytes())
}

/// The token of an `Authorization` header value (`Bearer TOKEN`, the scheme in any case).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Checks the text of a token read from a file or the environment (a stray newline is
/// trimmed by the caller): printable ASCII only, so it can go in a header.
pub fn check(token: &str) -> Result<()> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "a token is printable ASCII without spaces: copy it from `aurum token create` or \
             `aurum token node NODE`",
        ));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    super::to_hex(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_tokens_differ_by_node_generation_and_key() {
        let k = [7u8; KEY_LEN];
        let t = node_token(&k, "n01", 0);
        assert!(t.starts_with(NODE_PREFIX) && t.len() == NODE_PREFIX.len() + 64);
        assert_eq!(t, node_token(&k, "n01", 0));
        assert_ne!(t, node_token(&k, "n02", 0));
        assert_ne!(t, node_token(&k, "n01", 1));
        assert_ne!(t, node_token(&[8u8; KEY_LEN], "n01", 0));
        // No ambiguity between a name ending in a digit and the generation.
        assert_ne!(node_token(&k, "n1", 10), node_token(&k, "n11", 0));
        assert!(same(&t, &t.clone()) && !same(&t, &node_token(&k, "n01", 1)));
    }

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer "), None);
        assert!(check("aurum_tok_00").is_ok());
        assert!(check("a b").is_err() && check("").is_err() && check("é").is_err());
    }
}
