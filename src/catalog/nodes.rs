//! The node database: which machines exist, by name, MAC and address, and what each gets.
//!
//! This is what PXE needs (SystemImager kept it in `/etc/hosts` plus per-MAC files written by
//! `si_mkclientnetboot`; seed 002 kept it in an `ssitab`): a node's MAC picks its boot script,
//! its class picks the partition template, its image the revision it installs, its group the
//! overrides. Each node also remembers whether its next network boot installs or boots from
//! the local disk, and the last phase its install reported. The rows live in the catalog
//! (`inventory` table); this module holds their type, the checks every entry passes before it
//! is stored, and the CSV import format.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Result};
use crate::name::ClassName;

/// What a node's next network boot does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Boot {
    /// Load the boot kit and install the node's image (a new node, or a reinstall).
    Install,
    /// Boot from the local disk (after a successful install).
    Local,
}

impl Boot {
    pub fn as_str(self) -> &'static str {
        match self {
            Boot::Install => "install",
            Boot::Local => "local",
        }
    }

    pub fn parse(s: &str) -> Result<Boot> {
        match s {
            "install" => Ok(Boot::Install),
            "local" => Ok(Boot::Local),
            _ => Err(invalid(format!(
                "`{s}` is not a boot mode: install or local"
            ))),
        }
    }
}

/// Where a node's root filesystem lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootFs {
    /// Installed on its disk (`aurum install`), then booted from it.
    #[default]
    Disk,
    /// Diskless: every network boot fetches its revision into a tmpfs and runs from memory
    /// (`aurum boot-memory` in the boot kit); a reboot is an update, or a rollback.
    Memory,
    /// Diskless on a read-only network root: every network boot fetches the revision's
    /// exported image (`aurum export --netroot`), mounts it read-only under a tmpfs overlay
    /// (`aurum boot-netroot` in the boot kit); a reboot is an update, or a rollback.
    Netroot,
    /// Diskless on a read-only NFS root: every network boot mounts the revision's NFSv4
    /// export (`aurum export --nfs`, served by nfs-ganesha) read-only under a tmpfs overlay
    /// (`aurum boot-netroot` in the boot kit).
    Nfs,
}

impl RootFs {
    pub fn as_str(self) -> &'static str {
        match self {
            RootFs::Disk => "disk",
            RootFs::Memory => "memory",
            RootFs::Netroot => "netroot",
            RootFs::Nfs => "nfs",
        }
    }

    /// Whether the node boots the kit at every boot and runs without a disk of its own.
    pub fn is_diskless(self) -> bool {
        self != RootFs::Disk
    }

    pub fn parse(s: &str) -> Result<RootFs> {
        match s {
            "disk" => Ok(RootFs::Disk),
            "memory" => Ok(RootFs::Memory),
            "netroot" => Ok(RootFs::Netroot),
            "nfs" => Ok(RootFs::Nfs),
            _ => Err(invalid(format!(
                "`{s}` is not a root filesystem: disk (installed), memory (diskless, in RAM) netroot (diskless, a read-only network root image under a tmpfs overlay) or nfs (diskless, a read-only NFS root under a tmpfs overlay)"
            ))),
        }
    }
}

pub use crate::format::report::InstallPhase;

/// The protocol a BMC speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BmcProtocol {
    /// IPMI v2.0 over LAN (RMCP+, `ipmitool -I lanplus`).
    Ipmi,
    /// DMTF Redfish over HTTP(S).
    Redfish,
}

impl BmcProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            BmcProtocol::Ipmi => "ipmi",
            BmcProtocol::Redfish => "redfish",
        }
    }

    pub fn parse(s: &str) -> Result<BmcProtocol> {
        match s {
            "ipmi" => Ok(BmcProtocol::Ipmi),
            "redfish" => Ok(BmcProtocol::Redfish),
            _ => Err(invalid(format!(
                "`{s}` is not a BMC protocol: ipmi (IPMI v2.0 lanplus) or redfish"
            ))),
        }
    }
}

/// How a node's BMC is logged in to. The password itself is never stored: it is read from
/// `bmc_password_file` each time the BMC is used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BmcAccess {
    /// `None`: IPMI.
    pub bmc_protocol: Option<BmcProtocol>,
    pub bmc_user: Option<String>,
    /// Absolute path of the file holding the password (its first line).
    pub bmc_password_file: Option<String>,
    /// Redfish over HTTPS: the PEM file of the CA (or the self-signed certificate) the BMC's
    /// certificate is checked against, instead of the system's roots.
    pub bmc_ca_file: Option<String>,
}

impl BmcAccess {
    /// The protocol used: IPMI unless Redfish was chosen.
    pub fn protocol(&self) -> BmcProtocol {
        self.bmc_protocol.unwrap_or(BmcProtocol::Ipmi)
    }
}

/// The last install phase a node reported.
#[derive(Clone, Debug, Serialize)]
pub struct LastPhase {
    pub phase: InstallPhase,
    pub detail: String,
    /// The revision being installed, when known.
    pub revision: Option<String>,
    /// Seconds since the epoch.
    pub time: i64,
}

/// One node of the database.
#[derive(Clone, Debug, Serialize)]
pub struct NodeEntry {
    pub name: String,
    /// Lower case, colon separated (`52:54:00:11:23:01`).
    pub mac: String,
    pub ip: Option<String>,
    /// Hardware class (partition template); `None`: matched from the node's facts.
    pub class: Option<ClassName>,
    /// Revision reference to install (IMAGE, IMAGE@N, IMAGE:TAG).
    pub image: Option<String>,
    pub group: Option<String>,
    /// The BMC's address: `HOST[:PORT]` (IPMI, or Redfish over HTTPS), or a Redfish URL.
    pub bmc: Option<String>,
    /// How the BMC is reached, besides its address (no password: only where to read it).
    #[serde(flatten)]
    pub bmc_access: BmcAccess,
    pub boot: Boot,
    /// Where its root lives: on its disk, or in memory (diskless).
    pub rootfs: RootFs,
    pub last: Option<LastPhase>,
}

impl NodeEntry {
    /// A new node with the required fields checked and normalised.
    pub fn new(name: &str, mac: &str) -> Result<NodeEntry> {
        crate::name::check("node", name)?;
        Ok(NodeEntry {
            name: name.to_string(),
            mac: normalise_mac(mac)?,
            ip: None,
            class: None,
            image: None,
            group: None,
            bmc: None,
            bmc_access: BmcAccess::default(),
            boot: Boot::Install,
            rootfs: RootFs::Disk,
            last: None,
        })
    }

    /// Sets the IP address, checked.
    pub fn set_ip(&mut self, ip: Option<&str>) -> Result<()> {
        self.ip = match ip {
            None => None,
            Some(s) => Some(
                s.parse::<IpAddr>()
                    .map_err(|_| invalid(format!("`{s}` is not an IP address")))?
                    .to_string(),
            ),
        };
        Ok(())
    }

    /// The MAC with dashes, as pxelinux and iPXE's `${mac:hexhyp}` spell it.
    pub fn mac_dashes(&self) -> String {
        self.mac.replace(':', "-")
    }
}

/// `52:54:00:11:23:01` from any common spelling: colons or dashes, Cisco's dotted
/// `5254.0011.2301`, or bare hex; any case.
pub fn normalise_mac(s: &str) -> Result<String> {
    let hex: String = s
        .trim()
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | '.'))
        .collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(format!(
            "`{s}` is not a MAC address: give six hex bytes, like 52:54:00:11:23:01"
        )));
    }
    let hex = hex.to_ascii_lowercase();
    Ok(hex
        .as_bytes()
        .chunks(2)
        .map(|pair| pair.iter().map(|&b| char::from(b)).collect::<String>())
        .collect::<Vec<_>>()
        .join(":"))
}

/// The columns `aurum node import` knows; `name` and `mac` are required.
const CSV_COLUMNS: [&str; 12] = [
    "name",
    "mac",
    "ip",
    "class",
    "image",
    "group",
    "bmc",
    "bmc_protocol",
    "bmc_user",
    "bmc_password_file",
    "bmc_ca_file",
    "rootfs",
];

/// Parses the CSV of `aurum node import`: a header line naming the columns (name,mac,ip,
/// class,image,group and optionally bmc, bmc_protocol, bmc_user, bmc_password_file and
/// bmc_ca_file, and rootfs (disk, memory, netroot or nfs), in any order; the two files as absolute paths), then one node a line. Empty fields
/// are unset; blank lines and lines starting with `#` are skipped. Quoting is not supported
/// (no field of a node needs a comma).
pub fn parse_csv(text: &str, origin: &str) -> Result<Vec<NodeEntry>> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let (_, head) = lines
        .next()
        .ok_or_else(|| invalid(format!("{origin} is empty: it needs a header line")))?;
    let cols: Vec<String> = head
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    for c in &cols {
        if !CSV_COLUMNS.contains(&c.as_str()) {
            return Err(invalid(format!(
                "{origin}: unknown column `{c}` in the header; the columns are {}",
                CSV_COLUMNS.join(",")
            )));
        }
    }
    for req in ["name", "mac"] {
        if !cols.iter().any(|c| c == req) {
            return Err(invalid(format!(
                "{origin}: the header has no `{req}` column (it needs at least name,mac)"
            )));
        }
    }
    let mut out = Vec::new();
    for (n, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != cols.len() {
            return Err(invalid(format!(
                "{origin}:{n}: {} fields, the header has {}",
                fields.len(),
                cols.len()
            )));
        }
        let get = |name: &str| {
            cols.iter()
                .position(|c| c == name)
                .and_then(|i| fields.get(i).copied())
                .filter(|v| !v.is_empty())
        };
        let at = |e: crate::Error| invalid(format!("{origin}:{n}: {e}"));
        let mut node =
            NodeEntry::new(get("name").unwrap_or(""), get("mac").unwrap_or("")).map_err(at)?;
        node.set_ip(get("ip")).map_err(at)?;
        node.class = get("class").map(ClassName::new).transpose().map_err(at)?;
        node.image = get("image").map(String::from);
        node.group = get("group").map(String::from);
        node.bmc = get("bmc").map(String::from);
        node.rootfs = get("rootfs")
            .map(RootFs::parse)
            .transpose()
            .map_err(at)?
            .unwrap_or_default();
        let b = &mut node.bmc_access;
        b.bmc_protocol = get("bmc_protocol")
            .map(BmcProtocol::parse)
            .transpose()
            .map_err(at)?;
        b.bmc_user = get("bmc_user").map(String::from);
        for (col, slot) in [
            ("bmc_password_file", &mut b.bmc_password_file),
            ("bmc_ca_file", &mut b.bmc_ca_file),
        ] {
            *slot = get(col).map(String::from);
            if slot.as_deref().is_some_and(|f| !f.starts_with('/')) {
                return Err(at(invalid(format!("{col} must be an absolute path"))));
            }
        }
        out.push(node);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_normalised() {
        for s in [
            "52:54:00:11:23:0A",
            "52-54-00-11-23-0a",
            "5254.0011.230a",
            "52540011230A",
        ] {
            assert_eq!(normalise_mac(s).unwrap(), "52:54:00:11:23:0a", "{s}");
        }
        for bad in ["52:54:00:11:23", "52:54:00:11:23:0g", ""] {
            assert!(normalise_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn csv_with_any_column_order() {
        let nodes = parse_csv(
            "# cluster\nmac,name,ip,class,image,group\n52-54-00-00-00-01,n01,10.0.1.1,compute,compute:prod,rack1\n\n52:54:00:00:00:02,n02,,,,\n",
            "t.csv",
        )
        .unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].name, "n01");
        assert_eq!(nodes[0].mac, "52:54:00:00:00:01");
        assert_eq!(nodes[0].group.as_deref(), Some("rack1"));
        assert_eq!(nodes[1].ip, None);
        let e = parse_csv("name,mac\nn01,zz\n", "t.csv").unwrap_err();
        assert!(e.to_string().contains("t.csv:2"), "{e}");
        let e = parse_csv("name,mac,rack\n", "t.csv").unwrap_err();
        assert!(e.to_string().contains("unknown column `rack`"), "{e}");
    }

    #[test]
    fn csv_carries_bmc_access_but_no_relative_files() {
        let nodes = parse_csv(
            "name,mac,bmc,bmc_protocol,bmc_user,bmc_password_file\nn01,52:54:00:00:00:01,10.0.9.1,redfish,root,/etc/aurum/bmc.pw\n",
            "t.csv",
        )
        .unwrap();
        let b = &nodes[0].bmc_access;
        assert_eq!(b.protocol(), BmcProtocol::Redfish);
        assert_eq!(b.bmc_user.as_deref(), Some("root"));
        assert_eq!(b.bmc_password_file.as_deref(), Some("/etc/aurum/bmc.pw"));
        let e = parse_csv(
            "name,mac,bmc_password_file\nn01,52:54:00:00:00:01,bmc.pw\n",
            "t.csv",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("t.csv:2: bmc_password_file must be an absolute path"),
            "{e}"
        );
        let e = parse_csv(
            "name,mac,bmc_protocol\nn01,52:54:00:00:00:01,snmp\n",
            "t.csv",
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a BMC protocol"), "{e}");
    }

    #[test]
    fn csv_class_names_are_checked() {
        let nodes = parse_csv(
            "name,mac,class\nn01,52:54:00:00:00:01,bios-legacy\n",
            "t.csv",
        )
        .unwrap();
        assert_eq!(
            nodes[0].class.as_ref().map(ClassName::as_str),
            Some("bios-legacy")
        );
        for bad in ["../etc", "a b", "-x", "comp/ute"] {
            let e = parse_csv(
                &format!("name,mac,class\nn01,52:54:00:00:00:01,{bad}\n"),
                "t.csv",
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.starts_with("t.csv:2: `")
                    && e.contains("is not a valid class name: use letters, digits"),
                "{bad}: {e}"
            );
        }
    }
}
