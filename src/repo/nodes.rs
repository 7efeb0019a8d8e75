//! The checks `aurum node add`, `set` and `import` make against the repository: a node's class
//! must be a template class the repository has, and its image a revision it holds, so that a
//! typo is refused when it is typed and not found at the node's next network boot.

use crate::catalog::nodes::NodeEntry;
use crate::error::{Error, Result};
use crate::name::ClassName;

use super::Repository;

impl Repository {
    /// Checks that `class` is a template class of this repository and `image` names a
    /// revision it holds; `node` names the node in the error.
    pub fn check_node_fields(
        &self,
        node: &str,
        class: Option<&ClassName>,
        image: Option<&str>,
    ) -> Result<()> {
        if let Some(class) = class {
            if self.catalog.template(class, None)?.is_none() {
                let known: Vec<String> = self
                    .catalog
                    .templates()?
                    .into_iter()
                    .map(|t| t.class.to_string())
                    .collect();
                return Err(Error::NotFound(format!(
                    "node {node}: no class `{class}` (the classes are: {}); create it with `aurum template new {class}` or `aurum template import {class}.toml`, or give one of those",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )));
            }
        }
        if let Some(spec) = image {
            self.resolve(spec).map_err(|e| match e {
                // resolve's message already says where to look (`aurum lsimage`, `aurum log`).
                Error::NotFound(m) | Error::Invalid(m) => {
                    Error::NotFound(format!("node {node}: --image {spec}: {m}"))
                }
                other => other,
            })?;
        }
        Ok(())
    }

    /// [`check_node_fields`](Self::check_node_fields) for every field of `node`.
    pub fn check_node(&self, node: &NodeEntry) -> Result<()> {
        self.check_node_fields(&node.name, node.class.as_ref(), node.image.as_deref())
    }
}
