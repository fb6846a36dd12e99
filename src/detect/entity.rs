//! Entity checks: version regressions, gaps and conflicts in the change
//! stream of one row (DESIGN.md section 4). Pure: a change and the entity's
//! state in, the verdict out.

use serde::{Deserialize, Serialize};

use crate::events::{Violation, ViolationKind};
use crate::mapping::Change;
use crate::model::{Op, SeenIds, Version, first_sighting};

/// Changes remembered per entity to recognise redeliveries.
pub const RECENT_CHANGES: usize = 16;

/// What vigil remembers of one entity (table + primary key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityState {
    /// Highest version of the current life of the entity.
    pub highest: Option<Version>,
    /// Row hash of the change that brought the highest version.
    pub highest_row: u64,
    /// The last change was a delete: a create then starts a new life.
    pub deleted: bool,
    /// Ids of recent changes, oldest first, for duplicate detection.
    pub recent: SeenIds,
}

/// The verdict on one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntityVerdict {
    /// A redelivery of a change already seen: counted, never a violation.
    Duplicate,
    /// A change that breaks no rule.
    Accepted,
    Violation(Box<Violation>),
}

/// Checks one change of an entity against its state and updates the state.
pub fn check(state: &mut EntityState, change: &Change) -> EntityVerdict {
    if !first_sighting(&mut state.recent, change.id, RECENT_CHANGES) {
        return EntityVerdict::Duplicate;
    }

    let verdict = match (change.version, state.highest) {
        (Some(v), Some(highest)) if applies(state, change) => {
            judge(change, v, highest, state.highest_row)
        }
        _ => Judged::Fine,
    };
    if verdict == Judged::SameRow {
        return EntityVerdict::Duplicate;
    }
    if let Some(v) = change.version {
        let new_life = change.op == Op::Create && state.deleted;
        if new_life || state.highest.is_none_or(|h| v > h) {
            state.highest = Some(v);
            state.highest_row = change.row_hash;
        }
    }
    match change.op {
        Op::Delete => state.deleted = true,
        Op::Create | Op::Update => state.deleted = false,
        Op::Read | Op::Truncate => {}
    }
    match verdict {
        Judged::Broken(kind, latest, expected) => {
            EntityVerdict::Violation(Box::new(violation(change, kind, latest, expected)))
        }
        _ => EntityVerdict::Accepted,
    }
}

/// Whether version checks apply: not to snapshot reads, and not to the
/// create that starts a new life after a delete.
fn applies(state: &EntityState, change: &Change) -> bool {
    match change.op {
        Op::Read | Op::Truncate => false,
        Op::Create => !state.deleted,
        Op::Update | Op::Delete => true,
    }
}

/// The outcome of the version rules for one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judged {
    Fine,
    /// The highest version again with the same row: a redelivery in all
    /// but its record (counted as a duplicate, never a violation).
    SameRow,
    Broken(ViolationKind, Option<Version>, Option<Version>),
}

fn judge(change: &Change, v: Version, highest: Version, highest_row: u64) -> Judged {
    // A delete in a table versioned by a column carries the version of the
    // row it deletes: the highest one, not a new one.
    let row_delete = change.op == Op::Delete && change.rules.row_version;
    let next = Version::scalar(highest.major + 1);
    if v < highest {
        Judged::Broken(ViolationKind::VersionRegression, Some(highest), None)
    } else if change.rules.contiguous && ((row_delete && v > highest) || (!row_delete && v > next))
    {
        Judged::Broken(ViolationKind::VersionGap, Some(highest), Some(next))
    } else if v == highest && !row_delete {
        if change.row_hash == highest_row {
            Judged::SameRow
        } else {
            Judged::Broken(ViolationKind::ConflictingVersion, Some(highest), None)
        }
    } else {
        Judged::Fine
    }
}

fn violation(
    change: &Change,
    kind: ViolationKind,
    latest: Option<Version>,
    expected: Option<Version>,
) -> Violation {
    Violation {
        op: Some(change.op),
        version: change.version,
        latest_version: latest,
        expected_version: expected,
        change_ts_ms: Some(change.commit_ts_ms),
        transaction_id: change.tx_id.clone(),
        evidence: vec![change.provenance.clone()],
        ..Violation::new(
            kind,
            None,
            change.id,
            change.table.clone(),
            change.pk.clone(),
            change.commit_ts_ms,
        )
    }
}

#[cfg(test)]
mod tests;
