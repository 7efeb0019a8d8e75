//! Output folded as ClusterShell's `clubak -c` folds it: nodes whose output is byte for byte the
//! same are printed once, under the folded set of their names.

use std::collections::BTreeMap;

use super::nodeset;

/// One group of nodes that printed the same thing.
#[derive(Debug, PartialEq, Eq)]
pub struct Group<'a> {
    /// The folded set (`n[01-03,05]`).
    pub nodes: String,
    pub count: usize,
    pub output: &'a [u8],
}

/// Groups `(node, output)` pairs by identical output; the largest group first, then by the
/// first node's position, so the common answer leads and the odd ones follow.
pub fn fold<'a>(outputs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<Group<'a>> {
    let mut by_output: BTreeMap<&'a [u8], (usize, Vec<&'a str>)> = BTreeMap::new();
    for (i, (node, output)) in outputs.into_iter().enumerate() {
        by_output
            .entry(output)
            .or_insert((i, Vec::new()))
            .1
            .push(node);
    }
    let mut groups: Vec<(usize, Group<'a>)> = by_output
        .into_iter()
        .map(|(output, (first, names))| {
            (
                first,
                Group {
                    nodes: nodeset::fold(names.iter().copied()),
                    count: names.len(),
                    output,
                },
            )
        })
        .collect();
    groups.sort_by(|(fa, a), (fb, b)| b.count.cmp(&a.count).then(fa.cmp(fb)));
    groups.into_iter().map(|(_, g)| g).collect()
}

/// The line around a header, clubak's.
const RULE: &str = "---------------";

/// The text `clubak -c` prints for `groups`: a header of the folded node set (with the count
/// when more than one) between rules, then the output.
pub fn render(groups: &[Group]) -> String {
    let mut text = String::new();
    for g in groups {
        let head = if g.count > 1 {
            format!("{} ({})", g.nodes, g.count)
        } else {
            g.nodes.clone()
        };
        text.push_str(&format!("{RULE}\n{head}\n{RULE}\n"));
        let out = String::from_utf8_lossy(g.output);
        text.push_str(&out);
        if !out.is_empty() && !out.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_outputs_fold_under_one_header() {
        let outs: [(&str, &[u8]); 5] = [
            ("n01", b"12.8\n"),
            ("n02", b"12.8\n"),
            ("n03", b"12.7\n"),
            ("n04", b"12.8\n"),
            ("n10", b"12.8\n"),
        ];
        let groups = fold(outs);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].nodes, "n[01-02,04,10]");
        assert_eq!(groups[0].count, 4);
        assert_eq!(groups[1].nodes, "n03");
        let text = render(&groups);
        assert!(
            text.starts_with("---------------\nn[01-02,04,10] (4)\n---------------\n12.8\n"),
            "{text}"
        );
        assert!(text.ends_with("n03\n---------------\n12.7\n"), "{text}");
    }
}
