//! The node database in the catalog (`inventory` table) and the install phases nodes report.
//!
//! Names, MACs and IPs are unique. SQLite's UNIQUE constraints guarantee it, but their error
//! says nothing useful, so every write first looks for the node already holding the name, MAC
//! or IP and names it in the error.

use rusqlite::{params, OptionalExtension, Transaction};

use super::{now, Catalog};
use crate::catalog::nodes::{
    BmcAccess, BmcProtocol, Boot, InstallPhase, LastPhase, NodeEntry, RootFs,
};
use crate::error::{invalid, Error, Result};
use crate::name::ClassName;

const COLUMNS: &str =
    "name, mac, ip, class, image, grp, bmc, boot, phase, phase_detail, phase_revision, phase_time,
     bmc_protocol, bmc_user, bmc_password_file, bmc_ca_file, rootfs";

fn row(r: &rusqlite::Row) -> rusqlite::Result<NodeEntry> {
    let name: String = r.get(0)?;
    let boot: String = r.get(7)?;
    // Older aurum stored any class a node was given and any install phase a node reported.
    // Such a value reads as absent, with a warning naming the fix, so that listing the nodes
    // and `node set` (which repairs it) keep working.
    let class = r.get::<_, Option<String>>(3)?.and_then(|c| match c.parse::<ClassName>() {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!(
                "node {name}: its class `{c}` is not valid ({e}); shown as none: set it with `aurum node set {name} --class NAME`"
            );
            None
        }
    });
    let phase = r.get::<_, Option<String>>(8)?.and_then(|p| match InstallPhase::parse(&p) {
        Some(p) => Some(p),
        None => {
            log::warn!(
                "node {name}: its last install phase `{p}` is not one this aurum knows; shown as none until the node reports again"
            );
            None
        }
    });
    let bmc_protocol = r.get::<_, Option<String>>(12)?.and_then(|p| match BmcProtocol::parse(&p) {
        Ok(p) => Some(p),
        Err(e) => {
            log::warn!("node {name}: {e}; shown as none: set it with `aurum node set {name} --bmc-protocol ipmi|redfish`");
            None
        }
    });
    let rootfs = r.get::<_, Option<String>>(16)?.map_or(Ok(RootFs::Disk), |v| {
        RootFs::parse(&v).or_else(|e| {
            log::warn!("node {name}: {e}; shown as disk: set it with `aurum node set {name} --rootfs disk|memory|netroot`");
            Ok::<_, rusqlite::Error>(RootFs::Disk)
        })
    })?;
    Ok(NodeEntry {
        rootfs,
        bmc_access: BmcAccess {
            bmc_protocol,
            bmc_user: r.get(13)?,
            bmc_password_file: r.get(14)?,
            bmc_ca_file: r.get(15)?,
        },
        name,
        mac: r.get(1)?,
        ip: r.get(2)?,
        class,
        image: r.get(4)?,
        group: r.get(5)?,
        bmc: r.get(6)?,
        boot: if boot == "local" {
            Boot::Local
        } else {
            Boot::Install
        },
        last: match phase {
            Some(phase) => Some(LastPhase {
                phase,
                detail: r.get::<_, Option<String>>(9)?.unwrap_or_default(),
                revision: r.get(10)?,
                time: r.get::<_, Option<i64>>(11)?.unwrap_or(0),
            }),
            None => None,
        },
    })
}

/// A row of `phase, detail, revision, time` from `install_phases`.
fn phase_row(r: &rusqlite::Row) -> rusqlite::Result<LastPhase> {
    Ok(LastPhase {
        phase: r.get(0)?,
        detail: r.get(1)?,
        revision: r.get(2)?,
        time: r.get(3)?,
    })
}

/// Refuses `n` when another node (not `except`) has its name, MAC or IP.
fn check_unique(tx: &Transaction, n: &NodeEntry, except: Option<&str>) -> Result<()> {
    let other = |col: &str, v: &str| -> Result<Option<String>> {
        Ok(tx
            .query_row(
                &format!("SELECT name FROM inventory WHERE {col} = ?1 AND name IS NOT ?2"),
                params![v, except],
                |r| r.get(0),
            )
            .optional()?)
    };
    if except.is_none() && other("name", &n.name)?.is_some() {
        return Err(invalid(format!(
            "node {} already exists: change it with `aurum node set {}` or remove it first",
            n.name, n.name
        )));
    }
    if let Some(o) = other("mac", &n.mac)? {
        return Err(invalid(format!(
            "MAC {} is already node {o}'s: one MAC, one node (`aurum node show {o}`)",
            n.mac
        )));
    }
    if let Some(ip) = &n.ip {
        if let Some(o) = other("ip", ip)? {
            return Err(invalid(format!(
                "IP {ip} is already node {o}'s: one address, one node (`aurum node show {o}`)"
            )));
        }
    }
    Ok(())
}

fn insert(tx: &Transaction, n: &NodeEntry) -> Result<()> {
    check_unique(tx, n, None)?;
    tx.execute(
        "INSERT INTO inventory(name, mac, ip, class, image, grp, bmc, boot, created,
             bmc_protocol, bmc_user, bmc_password_file, bmc_ca_file, rootfs)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            n.name,
            n.mac,
            n.ip,
            n.class,
            n.image,
            n.group,
            n.bmc,
            n.boot.as_str(),
            now(),
            n.bmc_access.bmc_protocol.map(BmcProtocol::as_str),
            n.bmc_access.bmc_user,
            n.bmc_access.bmc_password_file,
            n.bmc_access.bmc_ca_file,
            n.rootfs.as_str(),
        ],
    )?;
    Ok(())
}

impl Catalog {
    /// Adds nodes, all or none (a CSV import with one bad line adds nothing).
    pub fn add_nodes(&mut self, nodes: &[NodeEntry]) -> Result<()> {
        let tx = self.conn.transaction()?;
        for n in nodes {
            insert(&tx, n)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every node of the database, by name.
    pub fn inventory(&self) -> Result<Vec<NodeEntry>> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM inventory ORDER BY name"))?;
        let rows = st.query_map([], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One node by name, or by MAC when `key` is a MAC.
    pub fn inventory_node(&self, key: &str) -> Result<Option<NodeEntry>> {
        let by = match crate::catalog::nodes::normalise_mac(key) {
            Ok(mac) if key.len() >= 12 && key.contains([':', '-', '.']) => ("mac", mac),
            _ => ("name", key.to_string()),
        };
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM inventory WHERE {} = ?1", by.0),
                [by.1],
                row,
            )
            .optional()?)
    }

    /// The node named `name`, or a NotFound error saying how to add it.
    pub fn inventory_get(&self, name: &str) -> Result<NodeEntry> {
        self.inventory_node(name)?.ok_or_else(|| {
            Error::NotFound(format!(
                "no node {name} in the node database: add it with `aurum node add {name} --mac MAC`"
            ))
        })
    }

    /// Replaces the fields of node `n.name` (which must exist) with those of `n`.
    pub fn update_node(&mut self, n: &NodeEntry) -> Result<()> {
        let tx = self.conn.transaction()?;
        check_unique(&tx, n, Some(&n.name))?;
        let changed = tx.execute(
            "UPDATE inventory SET mac = ?2, ip = ?3, class = ?4, image = ?5, grp = ?6, bmc = ?7, boot = ?8,
                 bmc_protocol = ?9, bmc_user = ?10, bmc_password_file = ?11, bmc_ca_file = ?12,
                 rootfs = ?13
             WHERE name = ?1",
            params![
                n.name,
                n.mac,
                n.ip,
                n.class,
                n.image,
                n.group,
                n.bmc,
                n.boot.as_str(),
                n.bmc_access.bmc_protocol.map(BmcProtocol::as_str),
                n.bmc_access.bmc_user,
                n.bmc_access.bmc_password_file,
                n.bmc_access.bmc_ca_file,
                n.rootfs.as_str(),
            ],
        )?;
        if changed == 0 {
            return Err(Error::NotFound(format!("no node {}", n.name)));
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes a node; false when there was none.
    pub fn remove_node(&mut self, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM inventory WHERE name = ?1", [name])?
            > 0)
    }

    /// Sets the revision reference node `name` boots, nothing else of its entry (a rollout of
    /// a diskless node moves it, and puts it back when the node falls back).
    pub fn set_node_image(&mut self, name: &str, image: &str) -> Result<()> {
        let changed = self.conn.execute(
            "UPDATE inventory SET image = ?2 WHERE name = ?1",
            params![name, image],
        )?;
        if changed == 0 {
            return Err(Error::NotFound(format!(
                "no node {name} in the node database: add it with `aurum node add {name} --mac MAC`"
            )));
        }
        Ok(())
    }

    /// Records an install phase of node `name` (kept in `install_phases`; it becomes the
    /// node's last phase). `done` switches the node to local boot, as si_netbootmond did, so
    /// that its next network boot does not install it again (a diskless node, whose every boot
    /// reports `done` too, stays as it is). Returns the node after.
    pub fn record_phase(
        &mut self,
        name: &str,
        phase: InstallPhase,
        detail: &str,
        revision: Option<&str>,
    ) -> Result<NodeEntry> {
        let tx = self.conn.transaction()?;
        let t = now();
        let changed = tx.execute(
            "UPDATE inventory SET phase = ?2, phase_detail = ?3,
                 phase_revision = COALESCE(?4, phase_revision), phase_time = ?5,
                 boot = CASE WHEN ?2 = 'done' AND COALESCE(rootfs, 'disk') = 'disk'
                             THEN 'local' ELSE boot END
             WHERE name = ?1",
            params![name, phase, detail, revision, t],
        )?;
        if changed == 0 {
            return Err(Error::NotFound(format!(
                "no node {name} in the node database: add it with `aurum node add {name} --mac MAC`"
            )));
        }
        tx.execute(
            "INSERT INTO install_phases(time, node, phase, detail, revision) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![t, name, phase, detail, revision],
        )?;
        tx.commit()?;
        self.inventory_get(name)
    }

    /// The install phases node `name` reported, oldest first, at most the last `limit`.
    pub fn install_phases(&self, name: &str, limit: usize) -> Result<Vec<LastPhase>> {
        let mut st = self.conn.prepare(
            "SELECT phase, detail, revision, time FROM install_phases WHERE node = ?1
             ORDER BY rowid DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![name, limit as i64], phase_row)?;
        let mut v: Vec<LastPhase> = rows.collect::<rusqlite::Result<_>>()?;
        v.reverse();
        Ok(v)
    }

    /// A mark in the install phases: those reported after it are [`Self::install_phases_after`].
    pub fn install_phase_mark(&self) -> Result<i64> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(MAX(rowid), 0) FROM install_phases",
            [],
            |r| r.get(0),
        )?)
    }

    /// The install phases node `name` reported after `mark`, oldest first.
    pub fn install_phases_after(&self, name: &str, mark: i64) -> Result<Vec<LastPhase>> {
        let mut st = self.conn.prepare(
            "SELECT phase, detail, revision, time FROM install_phases WHERE node = ?1 AND rowid > ?2
             ORDER BY rowid",
        )?;
        let rows = st.query_map(params![name, mark], phase_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
