//! Read-only views of the state, for `GET /v1/keys/{key}`,
//! `GET /v1/entities/{table}/{pk}`, `GET /v1/storms` and `GET
//! /v1/incidents` of a running `vigil run` and for `vigil inspect --state
//! DIR` on a stopped one.
//!
//! They read the store, not the memory of the workers and the detectors:
//! what they show is as of the last checkpoint (at most
//! `state.checkpoint_interval` old on a running instance). A key comes with
//! its changes (version, commit time, verdict status, covering
//! invalidation), its recent invalidations, its fills (waiting and judged)
//! and its armed deadline; an entity (a row) with the highest version of
//! its current life, whether its last change was a delete, and its recent
//! change ids; storms in progress with their scope, start,
//! rates, count and top keys and services; incidents open with their
//! table, start, window counts and share, violations and top keys.
//!
//! [`verdict_entries`] and [`compare_entries`] compare two states entry by
//! entry, as `vigil torture` and the two-stage tests do against `vigil
//! check`'s.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::detect::entity::EntityState;
use crate::detect::incident::IncidentEvent;
use crate::detect::key::{Fill, Invalidation, KeyChange, KeyState};
use crate::detect::storm::StormEvent;
use crate::model::Millis;
use crate::pipeline::{load_incidents, load_storms, read_entity, read_key};
use crate::state::{Cf, StateError, Store, codec};

/// What the store holds of one cache key.
#[derive(Debug, Clone, Serialize)]
pub struct KeyView {
    pub key: String,
    /// The input partition number whose state holds the key (0 unless
    /// `inputs.co_partitioned`).
    pub scope: i32,
    /// When the key's next deadline falls due (event time, ms), if armed.
    pub armed_deadline_ms: Option<Millis>,
    /// The latest event time seen at the key.
    pub touched_ms: Millis,
    /// Its changes by commit time, with their status (`Pending`, `Missed`,
    /// `Decided`) and the invalidation that covered each, if any.
    pub changes: Vec<KeyChange>,
    pub invalidations: Vec<Invalidation>,
    /// Fills waiting for the watermark.
    pub pending_fills: Vec<Fill>,
    /// Fills already judged, with the violation reported for each, if any.
    pub judged_fills: Vec<Fill>,
}

/// The key's view, from whichever scope holds it; `None` if no scope does.
pub fn key_view(store: &dyn Store, key: &str) -> Result<Option<KeyView>, StateError> {
    let found = first_scope(store, |scope| read_key(store, key, scope))?;
    Ok(found.map(|(scope, (state, armed))| {
        let (pending_fills, judged_fills) = state.fills.into_vecs();
        KeyView {
            key: key.to_string(),
            scope,
            armed_deadline_ms: armed,
            touched_ms: state.touched,
            changes: state.changes.into_vec(),
            invalidations: state.invalidations.into_vec(),
            pending_fills,
            judged_fills,
        }
    }))
}

/// What the store holds of one entity (a row of a mapped table).
#[derive(Debug, Clone, Serialize)]
pub struct EntityView {
    pub table: String,
    /// The primary key, a JSON object as in violations.
    pub pk: serde_json::Value,
    /// The input partition number whose state holds the entity.
    pub scope: i32,
    /// The latest commit time of its changes.
    pub touched_ms: Millis,
    /// The version checks' state: the highest version of the row's current
    /// life, the hash of that row image, whether the last change was a
    /// delete, and the ids of its recent changes.
    pub state: EntityState,
}

/// The view of the entity of row `pk` of `table`, from whichever scope
/// holds it; `None` if no scope does.
pub fn entity_view(
    store: &dyn Store,
    table: &str,
    pk: &str,
) -> Result<Option<EntityView>, StateError> {
    let found = first_scope(store, |scope| read_entity(store, table, pk, scope))?;
    Ok(found.map(|(scope, (state, touched))| EntityView {
        table: table.to_string(),
        // Found by the hash of its text, so it is the text the mapping
        // wrote: a JSON object.
        pk: serde_json::from_str(pk).unwrap_or_else(|_| serde_json::Value::String(pk.to_string())),
        scope,
        touched_ms: touched,
        state,
    }))
}

/// What `read` finds in the first scope that holds anything, with the
/// scope.
fn first_scope<T>(
    store: &dyn Store,
    mut read: impl FnMut(i32) -> Result<Option<T>, StateError>,
) -> Result<Option<(i32, T)>, StateError> {
    for scope in scopes(store)? {
        if let Some(found) = read(scope)? {
            return Ok(Some((scope, found)));
        }
    }
    Ok(None)
}

/// The scopes state can be kept under: 0, and every input partition number
/// the store has a position for.
fn scopes(store: &dyn Store) -> Result<BTreeSet<i32>, StateError> {
    let mut scopes = BTreeSet::from([0]);
    store.scan(Cf::Offsets, &[], &mut |key, _| {
        if let Some((_, partition)) = codec::parse_offset_key(key) {
            scopes.insert(partition);
        }
        true
    })?;
    Ok(scopes)
}

/// The storms in progress, each as an update at the last second judged
/// would report it.
pub fn storms_view(store: &dyn Store) -> Result<Vec<StormEvent>, StateError> {
    Ok(load_storms(store)?.in_progress())
}

/// The incidents open, each as an update at the last second judged would
/// report it.
pub fn incidents_view(store: &dyn Store) -> Result<Vec<IncidentEvent>, StateError> {
    Ok(load_incidents(store)?.in_progress())
}

/// The families that hold what verdicts depend on: two runs over the same
/// records must leave the same entries in them.
pub const VERDICT_FAMILIES: [Cf; 4] = [Cf::Entities, Cf::Keys, Cf::Timers, Cf::Wildcards];

/// Entries of [`VERDICT_FAMILIES`], by family and stored key.
pub type Entries = BTreeMap<(Cf, Vec<u8>), Vec<u8>>;

/// Every entry of [`VERDICT_FAMILIES`] in `store` whose scope `keep`
/// accepts.
pub fn verdict_entries(
    store: &dyn Store,
    keep: impl Fn(i32) -> bool,
) -> Result<Entries, StateError> {
    let mut out = Entries::new();
    for cf in VERDICT_FAMILIES {
        store.scan(cf, &[], &mut |k, v| {
            if codec::unscoped(k).is_none_or(|(scope, _)| keep(scope)) {
                out.insert((cf, k.to_vec()), v.to_vec());
            }
            true
        })?;
    }
    Ok(out)
}

/// What comparing two states found.
#[derive(Debug)]
pub struct StateComparison {
    /// Entries compared (the keys of either state).
    pub compared: u64,
    /// A description of each entry that differs.
    pub differing: Vec<String>,
    /// Keys equal but for an invalidation held twice.
    pub twice: u64,
}

/// Compares the entries of a run (named `run_name` in the descriptions)
/// with those of `vigil check`. Key states are compared with the ids they
/// have seen sorted and each invalidation once (see [`key_state`]); every
/// other entry byte for byte.
pub fn compare_entries(run: &Entries, run_name: &str, check: &Entries) -> StateComparison {
    let mut compared = 0;
    let mut differing = Vec::new();
    let mut twice = 0;
    let keys: BTreeSet<&(Cf, Vec<u8>)> = run.keys().chain(check.keys()).collect();
    for k in keys {
        compared += 1;
        let (cf, key) = k;
        let (l, r) = (run.get(k), check.get(k));
        if !same_entry(*cf, l, r, &mut twice) {
            differing.push(format!(
                "{} {}:\n  {run_name}: {}\n  check: {}",
                cf.name(),
                String::from_utf8_lossy(key),
                describe(*cf, l),
                describe(*cf, r)
            ));
        }
    }
    StateComparison {
        compared,
        differing,
        twice,
    }
}

fn same_entry(cf: Cf, l: Option<&Vec<u8>>, r: Option<&Vec<u8>>, twice: &mut u64) -> bool {
    match (l, r) {
        (Some(l), Some(r)) if l == r => true,
        (Some(l), Some(r)) if cf == Cf::Keys => match (key_state(l), key_state(r)) {
            (Ok((a, a_twice)), Ok((b, _))) if a == b => {
                *twice += u64::from(a_twice);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// A key's state, comparable between runs: the ids it has seen in order
/// (the order in which records of different partitions reached the key
/// may differ; which ids were seen may not), and each invalidation once.
/// Also whether an invalidation was held twice (a record read again after
/// a crash, whose invalidation the state already held).
fn key_state(bytes: &[u8]) -> Result<(String, bool), StateError> {
    let (touched, mut state) = codec::decode::<KeyState>(Cf::Keys, bytes)?;
    state.seen.sort_unstable();
    let held = state.invalidations.len();
    let mut once = Vec::with_capacity(held);
    for inv in state.invalidations {
        if !once.contains(&inv) {
            once.push(inv);
        }
    }
    let twice = once.len() < held;
    state.invalidations = once.into();
    Ok((format!("{touched} {state:?}"), twice))
}

fn describe(cf: Cf, v: Option<&Vec<u8>>) -> String {
    match v {
        None => "absent".to_string(),
        Some(bytes) if cf == Cf::Keys => key_state(bytes)
            .map(|(s, _)| s)
            .unwrap_or_else(|e| e.to_string()),
        Some(bytes) => format!("{} bytes", bytes.len()),
    }
}
