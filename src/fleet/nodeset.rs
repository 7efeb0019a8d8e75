//! Node sets: `n[01-64,70]`, `n[1-4]-ib`, `@group`, `@all`, and ClusterShell's operators
//! (`,` or space for union, `!` difference, `&` intersection, `^` symmetric difference), parsed
//! by the `nodeset` crate (the ClusterShell syntax in Rust). Groups come from the node database:
//! `@rack1` is every node whose group is `rack1`, `@all` every node it holds. A node the database
//! knows is reached at its recorded address; any other name is handed to ssh as it is (DNS,
//! /etc/hosts or ssh_config resolve it), so a set may name machines aurum does not manage.

use std::collections::BTreeMap;

use nodeset::NodeSet;

use crate::catalog::nodes::NodeEntry;
use crate::error::{invalid, Result};

/// The most nodes one set may name (a typo such as `n[1-999999999]` is refused, not expanded).
pub const MAX_NODES: usize = 1_000_000;

/// One node of a set: its name, and the host ssh connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub host: String,
}

/// The nodes `expr` names, in the set's order, with their addresses from `inventory`.
pub fn resolve(expr: &str, inventory: &[NodeEntry]) -> Result<Vec<Target>> {
    let names = expand(&with_groups(expr, inventory)?)?;
    if names.is_empty() {
        return Err(invalid(format!("the node set `{expr}` names no node")));
    }
    let address: BTreeMap<&str, &str> = inventory
        .iter()
        .filter_map(|n| Some((n.name.as_str(), n.ip.as_deref()?)))
        .collect();
    Ok(names
        .into_iter()
        .map(|name| Target {
            host: address
                .get(name.as_str())
                .unwrap_or(&name.as_str())
                .to_string(),
            name,
        })
        .collect())
}

/// The names a set expression (groups already replaced) expands to.
pub fn expand(expr: &str) -> Result<Vec<String>> {
    let set: NodeSet = expr.parse().map_err(|e| {
        invalid(format!(
            "`{expr}` is not a node set ({e}): write names and ranges as ClusterShell does, e.g. n[01-64,70] or @group"
        ))
    })?;
    if set.len() > MAX_NODES {
        return Err(invalid(format!(
            "`{expr}` names {} nodes, more than the {MAX_NODES} aurum works on at once: check the ranges",
            set.len()
        )));
    }
    Ok(set.iter().collect())
}

/// The folded form of `names` (`n[01-03,05]`), as ClusterShell prints it.
pub fn fold<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let joined: Vec<&str> = names.into_iter().collect();
    match joined.join(",").parse::<NodeSet>() {
        Ok(set) => set.to_string(),
        // Names the syntax cannot hold (none aurum accepts as node names) are listed as given.
        Err(_) => joined.join(","),
    }
}

/// `expr` with each `@group` replaced by the parenthesised list of the nodes in that group of
/// the node database (`@all`: every node). A group no node is in is an error naming the groups
/// that exist.
fn with_groups(expr: &str, inventory: &[NodeEntry]) -> Result<String> {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .unwrap_or(after.len());
        let group = &after[..len];
        let members: Vec<&str> = inventory
            .iter()
            .filter(|n| group == "all" || n.group.as_deref() == Some(group))
            .map(|n| n.name.as_str())
            .collect();
        if members.is_empty() {
            return Err(invalid(unknown_group(group, inventory)));
        }
        out.push('(');
        out.push_str(&members.join(","));
        out.push(')');
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

fn unknown_group(group: &str, inventory: &[NodeEntry]) -> String {
    if group.is_empty() {
        return "`@` must be followed by a group name (or @all)".to_string();
    }
    let mut groups: Vec<&str> = inventory
        .iter()
        .filter_map(|n| n.group.as_deref())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    if groups.is_empty() {
        format!("no node is in group `{group}`: no node of the node database has a group (set one with `aurum node set NAME --group {group}`)")
    } else {
        format!(
            "no node is in group `{group}`; the groups are {} (and @all)",
            groups.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::nodes::Boot;

    fn node(name: &str, ip: Option<&str>, group: Option<&str>) -> NodeEntry {
        NodeEntry {
            name: name.into(),
            mac: String::new(),
            ip: ip.map(Into::into),
            class: None,
            image: None,
            group: group.map(Into::into),
            bmc: None,
            bmc_access: Default::default(),
            boot: Boot::Local,
            rootfs: Default::default(),
            last: None,
        }
    }

    #[test]
    fn ranges_groups_and_operators() {
        let inv = [
            node("n01", Some("10.0.0.1"), Some("rack1")),
            node("n02", Some("10.0.0.2"), Some("rack1")),
            node("n03", None, Some("rack2")),
        ];
        let names = |e: &str| -> Vec<String> {
            resolve(e, &inv)
                .unwrap()
                .into_iter()
                .map(|t| t.name)
                .collect()
        };
        assert_eq!(names("n[01-03,05]"), ["n01", "n02", "n03", "n05"]);
        assert_eq!(names("@rack1"), ["n01", "n02"]);
        assert_eq!(names("@all!n02"), ["n01", "n03"]);
        assert_eq!(names("@rack1,@rack2&n0[2-3]"), ["n02", "n03"]);
        let t = resolve("n[02-03],login1", &inv).unwrap();
        let host = |name: &str| t.iter().find(|t| t.name == name).unwrap().host.clone();
        assert_eq!(host("n02"), "10.0.0.2");
        assert_eq!(
            host("n03"),
            "n03",
            "no address recorded: the name is the host"
        );
        assert_eq!(host("login1"), "login1");
        assert_eq!(fold(["n01", "n02", "n03", "n05"]), "n[01-03,05]");
        assert!(resolve("@rack9", &inv)
            .unwrap_err()
            .to_string()
            .contains("rack1, rack2"));
        assert!(resolve("n[3-1", &inv).is_err());
        assert!(resolve("n[01-003]", &inv).is_err());
        assert!(resolve("n[1-999999999]", &inv)
            .unwrap_err()
            .to_string()
            .contains("more than"));
    }
}
