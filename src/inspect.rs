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

use std::collections::BTreeSet;

use serde::Serialize;

use crate::detect::entity::EntityState;
use crate::detect::incident::IncidentEvent;
use crate::detect::key::{Fill, Invalidation, KeyChange};
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
    Ok(found.map(|(scope, (state, armed))| KeyView {
        key: key.to_string(),
        scope,
        armed_deadline_ms: armed,
        touched_ms: state.touched,
        changes: state.changes,
        invalidations: state.invalidations,
        pending_fills: state.fills,
        judged_fills: state.judged,
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
