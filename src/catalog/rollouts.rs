//! Rollouts in the catalog: the rollout, each node's part in it, and its log of events. The
//! driver (`fleet::rollout`) writes every transition here as it happens, so a rollout survives
//! the master's restart and other commands (`rollout status`, `pause`, the status page) read
//! it while it runs.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{now, Catalog};
use crate::error::{corrupt, Error, Result};
use crate::format::rollout::{NodeStep, Plan, RolloutState};

/// A rollout's row.
#[derive(Clone, Debug, Serialize)]
pub struct Rollout {
    pub id: i64,
    pub image: String,
    pub number: u32,
    pub revision: String,
    pub nodeset: String,
    pub plan: Plan,
    pub state: RolloutState,
    /// A pause or an abort asked by another command and not carried out yet.
    pub request: Option<RolloutState>,
    /// The wave being worked on (or last worked on).
    pub wave: usize,
    /// Why it stands where it does (the last transition's reason).
    pub reason: String,
    pub created: i64,
    pub updated: i64,
}

/// One node's part.
#[derive(Clone, Debug, Serialize)]
pub struct RolloutNode {
    pub node: String,
    pub host: String,
    pub wave: usize,
    pub state: NodeStep,
    /// The revision it ran before (what a rollback returns it to).
    pub previous: Option<String>,
    pub detail: String,
    pub updated: i64,
}

/// One line of a rollout's log.
#[derive(Clone, Debug, Serialize)]
pub struct RolloutEvent {
    pub time: i64,
    pub node: Option<String>,
    pub event: String,
}

const ROLLOUT: &str =
    "id, image, number, revision, nodeset, plan, state, wave, reason, created, updated, request";

fn rollout_row(r: &rusqlite::Row) -> rusqlite::Result<(Rollout, String)> {
    let plan: String = r.get(5)?;
    Ok((
        Rollout {
            id: r.get(0)?,
            image: r.get(1)?,
            number: r.get(2)?,
            revision: r.get(3)?,
            nodeset: r.get(4)?,
            plan: Plan::default(),
            state: r.get(6)?,
            wave: r.get::<_, i64>(7)? as usize,
            reason: r.get(8)?,
            created: r.get(9)?,
            updated: r.get(10)?,
            request: r.get(11)?,
        },
        plan,
    ))
}

fn with_plan((mut r, plan): (Rollout, String)) -> Result<Rollout> {
    r.plan = serde_json::from_str(&plan)
        .map_err(|e| corrupt(format!("rollout {}: its plan in the catalog: {e}", r.id)))?;
    Ok(r)
}

impl Catalog {
    /// Records a new rollout with its nodes (each `(node, host, wave)`), all pending, and
    /// returns its id.
    pub fn create_rollout(
        &mut self,
        image: &str,
        number: u32,
        revision: &str,
        nodeset: &str,
        plan: &Plan,
        nodes: &[(String, String, usize)],
    ) -> Result<i64> {
        let t = now();
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO rollouts(image, number, revision, nodeset, plan, state, wave, reason, created, updated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, 'started', ?7, ?7)",
            params![
                image,
                number,
                revision,
                nodeset,
                serde_json::to_string(plan).expect("plain data serialises"),
                RolloutState::Running,
                t
            ],
        )?;
        let id = tx.last_insert_rowid();
        for (node, host, wave) in nodes {
            tx.execute(
                "INSERT INTO rollout_nodes(rollout, node, host, wave, state, previous, detail, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL, '', ?6)",
                params![id, node, host, *wave as i64, NodeStep::Pending, t],
            )?;
        }
        tx.execute(
            "INSERT INTO rollout_events(rollout, time, node, event) VALUES (?1, ?2, NULL, ?3)",
            params![
                id,
                t,
                format!("started: {image}@{number} to {} nodes", nodes.len())
            ],
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// The rollout `id`.
    pub fn rollout(&self, id: i64) -> Result<Rollout> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {ROLLOUT} FROM rollouts WHERE id = ?1"),
                [id],
                rollout_row,
            )
            .optional()?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no rollout {id}: `aurum rollout status` lists them"
                ))
            })?;
        with_plan(row)
    }

    /// Every rollout, newest first.
    pub fn rollouts(&self) -> Result<Vec<Rollout>> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {ROLLOUT} FROM rollouts ORDER BY id DESC"))?;
        let rows = st.query_map([], rollout_row)?;
        rows.map(|r| with_plan(r?)).collect()
    }

    /// The nodes of rollout `id`, by wave then name.
    pub fn rollout_nodes(&self, id: i64) -> Result<Vec<RolloutNode>> {
        let mut st = self.conn.prepare(
            "SELECT node, host, wave, state, previous, detail, updated FROM rollout_nodes
             WHERE rollout = ?1 ORDER BY wave, node",
        )?;
        let rows = st.query_map([id], |r| {
            Ok(RolloutNode {
                node: r.get(0)?,
                host: r.get(1)?,
                wave: r.get::<_, i64>(2)? as usize,
                state: r.get(3)?,
                previous: r.get(4)?,
                detail: r.get(5)?,
                updated: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The log of rollout `id`, oldest first.
    pub fn rollout_events(&self, id: i64) -> Result<Vec<RolloutEvent>> {
        let mut st = self.conn.prepare(
            "SELECT time, node, event FROM rollout_events WHERE rollout = ?1 ORDER BY rowid",
        )?;
        let rows = st.query_map([id], |r| {
            Ok(RolloutEvent {
                time: r.get(0)?,
                node: r.get(1)?,
                event: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Asks rollout `id`'s driver to pause or abort (`None`: the request was carried out).
    pub fn set_rollout_request(&mut self, id: i64, request: Option<RolloutState>) -> Result<()> {
        let t = now();
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE rollouts SET request = ?2, updated = ?3 WHERE id = ?1",
            params![id, request, t],
        )?;
        if let Some(r) = request {
            tx.execute(
                "INSERT INTO rollout_events(rollout, time, node, event) VALUES (?1, ?2, NULL, ?3)",
                params![id, t, format!("{r} asked")],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Moves rollout `id` to `state` at `wave`, saying why, and logs it.
    pub fn set_rollout(
        &mut self,
        id: i64,
        state: RolloutState,
        wave: usize,
        reason: &str,
    ) -> Result<()> {
        let t = now();
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE rollouts SET state = ?2, wave = ?3, reason = ?4, updated = ?5 WHERE id = ?1",
            params![id, state, wave as i64, reason, t],
        )?;
        tx.execute(
            "INSERT INTO rollout_events(rollout, time, node, event) VALUES (?1, ?2, NULL, ?3)",
            params![id, t, format!("{state}: {reason}")],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Moves `node` of rollout `id` to `step`, saying why, and logs it; `previous` is kept
    /// when `None`.
    pub fn set_rollout_node(
        &mut self,
        id: i64,
        node: &str,
        step: NodeStep,
        previous: Option<&str>,
        detail: &str,
    ) -> Result<()> {
        let t = now();
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE rollout_nodes SET state = ?3, previous = COALESCE(?4, previous), detail = ?5, updated = ?6
             WHERE rollout = ?1 AND node = ?2",
            params![id, node, step, previous, detail, t],
        )?;
        let event = if detail.is_empty() {
            step.to_string()
        } else {
            format!("{step}: {detail}")
        };
        tx.execute(
            "INSERT INTO rollout_events(rollout, time, node, event) VALUES (?1, ?2, ?3, ?4)",
            params![id, t, node, event],
        )?;
        tx.commit()?;
        Ok(())
    }
}
