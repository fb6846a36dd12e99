//! What the tests of the registry encoders share: a sample change, and
//! decoded changes put in a comparable order.

use super::encode::{GenChange, GenRow};
use crate::formats::{DecodedCdc, RawChanges};
use crate::model::Op;

/// A change of row 42 of table 1, with the given versions before and after.
pub(super) fn change(op: Op, before: Option<u64>, after: Option<u64>) -> GenChange {
    let row = |version| GenRow {
        id: 42,
        version,
        note: "a \"quoted\" note",
    };
    GenChange {
        table: 1,
        op,
        before: before.map(row),
        after: after.map(row),
        commit_ts_ms: 1_700_000_000_123,
        position: 5_000,
        tx_id: 77,
        tx: None,
    }
}

/// Changes with the columns of their rows in name order.
pub(super) fn sorted(decoded: DecodedCdc<'_>) -> RawChanges<'_> {
    let DecodedCdc::Changes(mut changes) = decoded else {
        panic!("not a change: {decoded:?}");
    };
    for change in &mut changes {
        for row in change.before.iter_mut().chain(&mut change.after) {
            row.sort_by(|a, b| a.0.cmp(&b.0));
        }
    }
    changes
}
