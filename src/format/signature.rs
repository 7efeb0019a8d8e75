//! `sigs/IMAGE/N`: the signatures of one revision, published beside its refs so that a node
//! reading the repository as static files finds them.
//!
//! A signature is an SSH signature (the SSHSIG format of OpenSSH's `PROTOCOL.sshsig`, as
//! `ssh-keygen -Y sign` and `git` make them) over a short text that names the revision: its
//! image, number, manifest id, parent and creation time, and when it was signed. The text is
//! written in the file right above the armored signature, so that what was signed can be read
//! by a person and checked by `ssh-keygen -Y verify` with nothing but `head` and `sed` (the
//! book's Security chapter shows how). A file holds one block per signer (a key rotation signs
//! revisions again with the new key); blocks follow one another:
//!
//! ```text
//! aurum revision signature 1
//! image compute
//! number 3
//! manifest <64 hex digits>
//! parent <64 hex digits, or ->
//! created <seconds since the epoch>
//! signed <seconds since the epoch>
//! -----BEGIN SSH SIGNATURE-----
//! ...
//! -----END SSH SIGNATURE-----
//! ```
//!
//! The signed message is the block's first seven lines, byte for byte, each ending in `\n`.
//! The manifest id covers the whole tree (every file's content is named by id in it), so one
//! signature over these lines authenticates everything a node writes.
//!
//! Partition templates decide what is written where on a node's disks, so they are signed
//! the same way, in `sigs/_templates/CLASS/ID` (ID: the BLAKE3 id of the template's text; the
//! `_` keeps the directory apart from every image, whose names start with a letter or digit).
//! Their blocks name the class and the text, not the version: a pull numbers the versions it
//! saves anew, and the same text is the same template wherever it is kept:
//!
//! ```text
//! aurum template signature 1
//! class compute
//! text <64 hex digits>
//! signed <seconds since the epoch>
//! -----BEGIN SSH SIGNATURE-----
//! ...
//! -----END SSH SIGNATURE-----
//! ```
//!
//! Their message is the block's first four lines, under the SSHSIG namespace
//! [`TEMPLATE_NAMESPACE`], so that a revision's signature never passes as a template's.
//!
//! A template's signature says that a text was once an administrator's template for its
//! class, not that it still is: a hostile server could hand out an older signed text of a
//! class, or leave a class out of the unsigned `templates/CLASSES`. So the repository also
//! publishes a signed **template set**, [`TEMPLATE_SET_PATH`]: every class with the id of its
//! current text, and when the set was signed. An installer that checks signatures takes the
//! newest set a trusted key signed, uses only the texts it names, holds its signing time to
//! `max-age` (as revisions are held: a frozen server keeps serving an old set), and a pull
//! refuses a set older than the one it holds. One block per signer, under the namespace
//! [`TEMPLATE_SET_NAMESPACE`]; the message is the lines up to the last `class` line:
//!
//! ```text
//! aurum template set 1
//! signed <seconds since the epoch>
//! classes <how many>
//! class compute <64 hex digits>
//! class login <64 hex digits>
//! -----BEGIN SSH SIGNATURE-----
//! ...
//! -----END SSH SIGNATURE-----
//! ```
//!
//! A network-root image (`aurum export --netroot`) is a file built from a revision, not the
//! revision itself, so its bytes are signed on their own, in `netroot/FILE.erofs.sig` beside
//! the image (FILE: the image's BLAKE3; see [`super::netroot`]). A block names the revision as
//! its signature does (image, number, manifest) and the image file (its BLAKE3 and size), under
//! the namespace [`NETROOT_NAMESPACE`]; its message is the block's first seven lines:
//!
//! ```text
//! aurum netroot signature 1
//! image compute
//! number 3
//! manifest <64 hex digits>
//! file <64 hex digits: BLAKE3 of the image>
//! bytes <the image's size>
//! signed <seconds since the epoch>
//! -----BEGIN SSH SIGNATURE-----
//! ...
//! -----END SSH SIGNATURE-----
//! ```

use std::fmt::Write as _;

use super::refs::Problem;
use super::Id;

/// Version of the block layout, on each block's first line; a reader refuses a newer one.
pub const VERSION: u32 = 1;

/// The SSHSIG namespace of revision signatures: a signature made for anything else (a git
/// commit, a file signed with `ssh-keygen -Y sign -n file`) never passes as one.
pub const NAMESPACE: &str = "aurum-revision";

/// The SSHSIG namespace of template signatures.
pub const TEMPLATE_NAMESPACE: &str = "aurum-template";

/// The SSHSIG namespace of template sets.
pub const TEMPLATE_SET_NAMESPACE: &str = "aurum-template-set";

/// The published path of the template set, relative to `public/` (`_` keeps it apart from
/// every image's directory, as [`TEMPLATE_DIR`]).
pub const TEMPLATE_SET_PATH: &str = "sigs/_template-set";

/// The SSHSIG namespace of network-root image signatures.
pub const NETROOT_NAMESPACE: &str = "aurum-netroot";

/// What each block starts with; the version follows.
const HEADER: &str = "aurum revision signature";
const TEMPLATE_HEADER: &str = "aurum template signature";
const SET_HEADER: &str = "aurum template set";
const NETROOT_HEADER: &str = "aurum netroot signature";
/// The directory of template signatures under `sigs/`.
pub const TEMPLATE_DIR: &str = "sigs/_templates";
const BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
const END: &str = "-----END SSH SIGNATURE-----";

/// The published path of a revision's signatures, relative to `public/`.
pub fn path(image: &str, number: u32) -> String {
    format!("sigs/{image}/{number}")
}

/// The published path of the signatures of `class`'s template whose text has id `text`.
pub fn template_path(class: &str, text: &Id) -> String {
    format!("{TEMPLATE_DIR}/{class}/{}", text.hex())
}

/// What a template's signature vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedTemplate {
    pub class: String,
    /// The id of the template's text (its bytes, as published in `templates/CLASS.toml`).
    pub text: Id,
    /// When it was signed.
    pub signed: i64,
}

impl SignedTemplate {
    /// The bytes the signature is made over: the block's first four lines.
    pub fn message(&self) -> Vec<u8> {
        format!(
            "{TEMPLATE_HEADER} {VERSION}\nclass {}\ntext {}\nsigned {}\n",
            self.class,
            self.text.hex(),
            self.signed
        )
        .into_bytes()
    }
}

/// One block of a template's signatures file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateSignature {
    pub template: SignedTemplate,
    /// As in [`Signature::armored`].
    pub armored: String,
}

impl Statement for SignedTemplate {
    const HEADER: &'static str = TEMPLATE_HEADER;
    const WANT: &'static str = "aurum template signature VERSION";

    fn message(&self) -> Vec<u8> {
        SignedTemplate::message(self)
    }

    fn read(lines: &mut Lines) -> Result<Self, Problem> {
        let bad = |line: usize, want| Problem::BadLine { line, want };
        let (n, class) = field(lines, "class", "class NAME")?;
        if !crate::name::is_valid(&class) {
            return Err(bad(n, "class NAME"));
        }
        let (n, hex) = field(lines, "text", "text ID")?;
        let text = Id::from_hex(&hex).ok_or(bad(n, "text ID"))?;
        Ok(SignedTemplate {
            class,
            text,
            signed: seconds(lines, "signed", "signed SECONDS")?,
        })
    }
}

/// What a template set's signature vouches for: the current text of every class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateSet {
    /// When it was signed: the newest trusted set is the one that counts.
    pub signed: i64,
    /// Every class and the id of its text, sorted by class, each class once.
    pub classes: Vec<(String, Id)>,
}

impl TemplateSet {
    /// The bytes the signature is made over: the block's lines up to the last `class` line.
    pub fn message(&self) -> Vec<u8> {
        let mut s = format!(
            "{SET_HEADER} {VERSION}\nsigned {}\nclasses {}\n",
            self.signed,
            self.classes.len()
        );
        for (class, text) in &self.classes {
            // Writing to a String cannot fail.
            let _ = writeln!(s, "class {class} {}", text.hex());
        }
        s.into_bytes()
    }

    /// The id of `class`'s text in the set.
    pub fn text_of(&self, class: &str) -> Option<&Id> {
        self.classes
            .iter()
            .find(|(c, _)| c == class)
            .map(|(_, t)| t)
    }
}

/// One block of the template set file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateSetSignature {
    pub set: TemplateSet,
    /// As in [`Signature::armored`].
    pub armored: String,
}

/// A set whose classes are not sorted and unique is refused: its message would not be the one
/// signed.
impl Statement for TemplateSet {
    const HEADER: &'static str = SET_HEADER;
    const WANT: &'static str = "aurum template set VERSION";

    fn message(&self) -> Vec<u8> {
        TemplateSet::message(self)
    }

    fn read(lines: &mut Lines) -> Result<Self, Problem> {
        let bad = |line: usize, want| Problem::BadLine { line, want };
        let signed = seconds(lines, "signed", "signed SECONDS")?;
        let (n, count) = field(lines, "classes", "classes N")?;
        let count: usize = count.parse().map_err(|_| bad(n, "classes N"))?;
        let mut classes: Vec<(String, Id)> = Vec::new();
        for _ in 0..count {
            let (n, l) = next_line(lines, "class NAME ID")?;
            let want = "class NAME ID (sorted by class, each once)";
            let mut words = l.strip_prefix("class ").unwrap_or("").split(' ');
            let (Some(class), Some(hex), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad(n, want));
            };
            let id = Id::from_hex(hex).ok_or(bad(n, want))?;
            if !crate::name::is_valid(class)
                || classes
                    .last()
                    .is_some_and(|(last, _)| last.as_str() >= class)
            {
                return Err(bad(n, want));
            }
            classes.push((class.to_string(), id));
        }
        Ok(TemplateSet { signed, classes })
    }
}

/// What one kind of signature vouches for: the lines of its block before the armored
/// signature, which are the message signed.
pub trait Statement: Sized {
    /// What the block's first line starts with; the version follows.
    const HEADER: &'static str;
    /// The first line, as an error describes it.
    const WANT: &'static str;
    /// The bytes the signature is made over: the block's lines before the armored signature.
    fn message(&self) -> Vec<u8>;
    /// Reads the lines after the first, up to the armored signature.
    fn read(lines: &mut Lines) -> Result<Self, Problem>;
}

/// One block of a signatures file: a [`Statement`] and the armored SSH signature over its
/// message.
pub trait Block: Sized {
    type Statement: Statement;
    fn statement(&self) -> &Self::Statement;
    fn armored(&self) -> &str;
    fn new(statement: Self::Statement, armored: String) -> Self;
}

/// [`Block`] for a signature type whose statement is field `$field`.
macro_rules! block {
    ($block:ident, $field:ident, $statement:ty) => {
        impl Block for $block {
            type Statement = $statement;
            fn statement(&self) -> &$statement {
                &self.$field
            }
            fn armored(&self) -> &str {
                &self.armored
            }
            fn new($field: $statement, armored: String) -> Self {
                $block { $field, armored }
            }
        }
    };
}

block!(Signature, revision, SignedRevision);
block!(TemplateSignature, template, SignedTemplate);
block!(TemplateSetSignature, set, TemplateSet);
block!(NetrootSignature, netroot, SignedNetroot);

/// A signatures file holding `sigs`, in the order given: each block's message, then its
/// armored signature.
pub fn encode<B: Block>(sigs: &[B]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in sigs {
        out.extend(s.statement().message());
        out.extend(s.armored().trim_end().as_bytes());
        out.push(b'\n');
    }
    out
}

/// Reads a signatures file of blocks `B`; refuses anything it cannot read whole, and a block
/// of a newer version.
pub fn decode<B: Block>(data: &[u8]) -> Result<Vec<B>, Problem> {
    let text = std::str::from_utf8(data).map_err(|_| Problem::NotText)?;
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(Problem::CutShort);
    }
    let mut lines = text.lines().enumerate().peekable();
    let mut sigs = Vec::new();
    while lines.peek().is_some() {
        let version = header(&mut lines, B::Statement::HEADER, B::Statement::WANT)?;
        if version > VERSION {
            return Err(Problem::Newer {
                version,
                reads: VERSION,
            });
        }
        let statement = B::Statement::read(&mut lines)?;
        sigs.push(B::new(statement, armored(&mut lines)?));
    }
    Ok(sigs)
}

/// A `key SECONDS` line (`want` describes it): the seconds.
fn seconds(lines: &mut Lines, key: &str, want: &'static str) -> Result<i64, Problem> {
    let (n, v) = field(lines, key, want)?;
    v.parse().map_err(|_| Problem::BadLine { line: n, want })
}

pub type Lines<'a> = std::iter::Peekable<std::iter::Enumerate<std::str::Lines<'a>>>;

/// The next line, numbered from 1.
fn next_line<'a>(lines: &mut Lines<'a>, want: &'static str) -> Result<(usize, &'a str), Problem> {
    lines
        .next()
        .map(|(n, l)| (n + 1, l))
        .ok_or(Problem::BadLine { line: 0, want })
}

/// A block's first line, `HEADER VERSION`: the version.
fn header(lines: &mut Lines, head: &str, want: &'static str) -> Result<u32, Problem> {
    let (n, first) = next_line(lines, want)?;
    first
        .strip_prefix(head)
        .and_then(|v| v.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .ok_or(Problem::BadLine { line: n, want })
}

/// A `key value` line (one word of value): its number and the value.
fn field(lines: &mut Lines, key: &str, want: &'static str) -> Result<(usize, String), Problem> {
    let (n, l) = next_line(lines, want)?;
    l.strip_prefix(key)
        .and_then(|v| v.strip_prefix(' '))
        .filter(|v| !v.is_empty() && !v.contains(char::is_whitespace))
        .map(|v| (n, v.to_string()))
        .ok_or(Problem::BadLine { line: n, want })
}

/// The armored SSH signature that ends a block, lines ending in `\n`.
fn armored(lines: &mut Lines) -> Result<String, Problem> {
    let bad = |line: usize, want| Problem::BadLine { line, want };
    let (n, begin) = next_line(lines, BEGIN)?;
    if begin != BEGIN {
        return Err(bad(n, BEGIN));
    }
    let mut armored = format!("{BEGIN}\n");
    loop {
        let (n, l) = next_line(lines, END)?;
        if l == END {
            break;
        }
        if l.is_empty()
            || !l
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        {
            return Err(bad(n, "base64 signature line"));
        }
        armored.push_str(l);
        armored.push('\n');
    }
    armored.push_str(END);
    armored.push('\n');
    Ok(armored)
}

/// What a network-root image's signature vouches for: this file is revision `image@number`
/// (`manifest`) as a filesystem image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedNetroot {
    /// The image's name where it was signed (as in [`SignedRevision::image`]).
    pub image: String,
    pub number: u32,
    pub manifest: Id,
    /// BLAKE3 of the whole image file.
    pub file: Id,
    pub bytes: u64,
    /// When it was signed.
    pub signed: i64,
}

impl SignedNetroot {
    /// The bytes the signature is made over: the block's first seven lines.
    pub fn message(&self) -> Vec<u8> {
        format!(
            "{NETROOT_HEADER} {VERSION}\nimage {}\nnumber {}\nmanifest {}\nfile {}\nbytes {}\nsigned {}\n",
            self.image,
            self.number,
            self.manifest.hex(),
            self.file.hex(),
            self.bytes,
            self.signed
        )
        .into_bytes()
    }
}

/// One block of a network-root image's signatures file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetrootSignature {
    pub netroot: SignedNetroot,
    /// As in [`Signature::armored`].
    pub armored: String,
}

impl Statement for SignedNetroot {
    const HEADER: &'static str = NETROOT_HEADER;
    const WANT: &'static str = "aurum netroot signature VERSION";

    fn message(&self) -> Vec<u8> {
        SignedNetroot::message(self)
    }

    fn read(lines: &mut Lines) -> Result<Self, Problem> {
        let bad = |line: usize, want| Problem::BadLine { line, want };
        let (image, number, manifest) = named_revision(lines)?;
        let (n, file) = field(lines, "file", "file BLAKE3")?;
        let file = Id::from_hex(&file).ok_or_else(|| bad(n, "file BLAKE3"))?;
        let (n, bytes) = field(lines, "bytes", "bytes N")?;
        let bytes = bytes.parse().map_err(|_| bad(n, "bytes N"))?;
        Ok(SignedNetroot {
            image,
            number,
            manifest,
            file,
            bytes,
            signed: seconds(lines, "signed", "signed SECONDS")?,
        })
    }
}

/// The `image`, `number` and `manifest` lines that name a revision.
fn named_revision(lines: &mut Lines) -> Result<(String, u32, Id), Problem> {
    let bad = |line: usize, want| Problem::BadLine { line, want };
    let (n, image) = field(lines, "image", "image NAME")?;
    if image.chars().any(|c| c.is_control()) {
        return Err(bad(n, "image NAME"));
    }
    let (n, number) = field(lines, "number", "number N")?;
    let number = number.parse().map_err(|_| bad(n, "number N"))?;
    let (n, manifest) = field(lines, "manifest", "manifest ID")?;
    let manifest = Id::from_hex(&manifest).ok_or_else(|| bad(n, "manifest ID"))?;
    Ok((image, number, manifest))
}

/// What a signature vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedRevision {
    /// The image's name where it was signed (a pulled copy is `REMOTE/IMAGE` here).
    pub image: String,
    pub number: u32,
    /// The revision's id: its manifest's.
    pub manifest: Id,
    pub parent: Option<Id>,
    /// When the revision was made, seconds since the epoch.
    pub created: i64,
    /// When it was signed: a node that sets `max-age` refuses a revision whose newest
    /// signature is older (a freeze attack keeps serving old, validly signed state).
    pub signed: i64,
}

impl SignedRevision {
    /// The bytes the signature is made over: the block's first seven lines.
    pub fn message(&self) -> Vec<u8> {
        let mut s = String::new();
        let parent = self.parent.map_or_else(|| "-".to_string(), |p| p.hex());
        // Writing to a String cannot fail.
        let _ = write!(
            s,
            "{HEADER} {VERSION}\nimage {}\nnumber {}\nmanifest {}\nparent {parent}\ncreated {}\nsigned {}\n",
            self.image,
            self.number,
            self.manifest.hex(),
            self.created,
            self.signed
        );
        s.into_bytes()
    }

    /// `compute@3`.
    pub fn name(&self) -> String {
        format!("{}@{}", self.image, self.number)
    }
}

/// One block: what was signed, and the armored SSH signature over [`SignedRevision::message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub revision: SignedRevision,
    /// From `-----BEGIN SSH SIGNATURE-----` to `-----END SSH SIGNATURE-----`, lines ending in
    /// `\n`.
    pub armored: String,
}

impl Statement for SignedRevision {
    const HEADER: &'static str = HEADER;
    const WANT: &'static str = "aurum revision signature VERSION";

    fn message(&self) -> Vec<u8> {
        SignedRevision::message(self)
    }

    fn read(lines: &mut Lines) -> Result<Self, Problem> {
        let (image, number, manifest) = named_revision(lines)?;
        let (n, parent) = field(lines, "parent", "parent ID")?;
        let parent = match parent.as_str() {
            "-" => None,
            p => Some(Id::from_hex(p).ok_or(Problem::BadLine {
                line: n,
                want: "parent ID",
            })?),
        };
        Ok(SignedRevision {
            image,
            number,
            manifest,
            parent,
            created: seconds(lines, "created", "created SECONDS")?,
            signed: seconds(lines, "signed", "signed SECONDS")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sig(image: &str, number: u32, parent: bool, created: i64, signed: i64) -> Signature {
        Signature {
            revision: SignedRevision {
                image: image.into(),
                number,
                manifest: Id::of(image.as_bytes()),
                parent: parent.then(|| Id::of(b"parent")),
                created,
                signed,
            },
            armored: format!("{BEGIN}\nU1NIU0lH\nAAAA==\n{END}\n"),
        }
    }

    proptest! {
        #[test]
        fn round_trips(image in "[a-z][a-z0-9_.-]{0,20}(/[a-z][a-z0-9]{0,8})?",
                       number in any::<u32>(), parent in any::<bool>(),
                       created in any::<i64>(), signed in any::<i64>(), count in 1usize..4) {
            let sigs: Vec<Signature> =
                (0..count).map(|i| sig(&image, number, parent, created, signed + i as i64)).collect();
            let bytes = encode(&sigs);
            prop_assert_eq!(decode::<Signature>(&bytes).unwrap(), sigs);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode::<Signature>(&data);
        }
    }

    #[test]
    fn template_signatures_round_trip_and_refuse_what_they_cannot_read() {
        let t = TemplateSignature {
            template: SignedTemplate {
                class: "compute".into(),
                text: Id::of(b"[[disk]]"),
                signed: 30,
            },
            armored: format!("{BEGIN}\nU1NIU0lH\n{END}\n"),
        };
        let bytes = encode(&[t.clone(), t.clone()]);
        assert_eq!(
            decode::<TemplateSignature>(&bytes).unwrap(),
            vec![t.clone(), t.clone()]
        );
        let text = String::from_utf8(encode(std::slice::from_ref(&t))).unwrap();
        let head: String = text.split_inclusive('\n').take(4).collect();
        assert_eq!(head.as_bytes(), t.template.message());
        assert!(matches!(
            decode::<TemplateSignature>(text.replace("class compute", "class ../x").as_bytes()),
            Err(Problem::BadLine { line: 2, .. })
        ));
        // A revision's file is no template's.
        assert!(decode::<TemplateSignature>(&encode(&[sig("compute", 3, false, 10, 20)])).is_err());
        assert_eq!(
            template_path("compute", &t.template.text),
            format!("sigs/_templates/compute/{}", t.template.text.hex())
        );
    }

    #[test]
    fn template_sets_round_trip_and_refuse_what_they_cannot_read() {
        let set = TemplateSetSignature {
            set: TemplateSet {
                signed: 40,
                classes: vec![
                    ("compute".into(), Id::of(b"c")),
                    ("login".into(), Id::of(b"l")),
                ],
            },
            armored: format!("{BEGIN}\nU1NIU0lH\n{END}\n"),
        };
        let bytes = encode(&[set.clone(), set.clone()]);
        assert_eq!(
            decode::<TemplateSetSignature>(&bytes).unwrap(),
            vec![set.clone(), set.clone()]
        );
        let text = String::from_utf8(encode(std::slice::from_ref(&set))).unwrap();
        let head: String = text.split_inclusive('\n').take(5).collect();
        assert_eq!(head.as_bytes(), set.set.message());
        assert_eq!(set.set.text_of("login"), Some(&Id::of(b"l")));
        assert_eq!(set.set.text_of("master"), None);
        // Out of order, twice, a bad name, a count that lies: refused.
        let swapped = text.replace("class compute", "class zzz");
        assert!(decode::<TemplateSetSignature>(swapped.as_bytes()).is_err());
        let twice = text.replace("class login", "class compute");
        assert!(decode::<TemplateSetSignature>(twice.as_bytes()).is_err());
        let bad = text.replace("class compute", "class ../x");
        assert!(matches!(
            decode::<TemplateSetSignature>(bad.as_bytes()),
            Err(Problem::BadLine { line: 4, .. })
        ));
        assert!(
            decode::<TemplateSetSignature>(text.replace("classes 2", "classes 3").as_bytes())
                .is_err()
        );
        assert!(
            decode::<TemplateSetSignature>(text.replace("classes 2", "classes 1").as_bytes())
                .is_err()
        );
        // A template's signature is no set's.
        let t = TemplateSignature {
            template: SignedTemplate {
                class: "compute".into(),
                text: Id::of(b"c"),
                signed: 1,
            },
            armored: set.armored.clone(),
        };
        assert!(decode::<TemplateSetSignature>(&encode(&[t])).is_err());
        assert_eq!(decode::<TemplateSetSignature>(b"").unwrap(), vec![]);
    }

    #[test]
    fn netroot_signatures_round_trip_and_are_no_revisions_signatures() {
        let n = NetrootSignature {
            netroot: SignedNetroot {
                image: "compute".into(),
                number: 3,
                manifest: Id::of(b"m"),
                file: Id::of(b"image"),
                bytes: 1 << 30,
                signed: 40,
            },
            armored: format!("{BEGIN}\nU1NIU0lH\n{END}\n"),
        };
        let bytes = encode(&[n.clone(), n.clone()]);
        assert_eq!(
            decode::<NetrootSignature>(&bytes).unwrap(),
            vec![n.clone(), n.clone()]
        );
        let text = String::from_utf8(encode(std::slice::from_ref(&n))).unwrap();
        let head: String = text.split_inclusive('\n').take(7).collect();
        assert_eq!(head.as_bytes(), n.netroot.message());
        assert!(matches!(
            decode::<NetrootSignature>(text.replace("bytes 1073741824", "bytes many").as_bytes()),
            Err(Problem::BadLine { line: 6, .. })
        ));
        assert!(decode::<Signature>(text.as_bytes()).is_err());
        assert!(decode::<NetrootSignature>(&encode(&[sig("compute", 3, false, 10, 20)])).is_err());
    }

    #[test]
    fn the_message_is_the_blocks_first_seven_lines() {
        let s = sig("compute", 3, true, 10, 20);
        let file = String::from_utf8(encode(std::slice::from_ref(&s))).unwrap();
        let head: String = file.split_inclusive('\n').take(7).collect();
        assert_eq!(head.as_bytes(), s.revision.message());
        assert!(head.starts_with("aurum revision signature 1\nimage compute\nnumber 3\n"));
    }

    #[test]
    fn refuses_what_it_cannot_read_whole() {
        let good = encode(&[sig("compute", 3, false, 10, 20)]);
        assert_eq!(
            decode::<Signature>(&good[..good.len() - 1]),
            Err(Problem::CutShort)
        );
        let text = String::from_utf8(good).unwrap();
        let newer = text.replace("signature 1", "signature 9");
        assert!(matches!(
            decode::<Signature>(newer.as_bytes()),
            Err(Problem::Newer { version: 9, .. })
        ));
        let bad = text.replace("number 3", "number three");
        assert!(matches!(
            decode::<Signature>(bad.as_bytes()),
            Err(Problem::BadLine { line: 3, .. })
        ));
        let cut: String = text.lines().take(8).map(|l| format!("{l}\n")).collect();
        assert!(decode::<Signature>(cut.as_bytes()).is_err());
        assert_eq!(decode::<Signature>(b"").unwrap(), vec![]);
    }
}
