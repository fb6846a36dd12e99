//! The life of a reported condition — an invalidation storm, a consistency
//! incident — judged one second of event time at a time: it opens, is
//! reported again at most every `update_every` while it lasts, and closes
//! once it has stayed calm for `hold` seconds in a row (hysteresis: no
//! flapping). Its reports have deterministic ids, decided by event time
//! only: the same input gives the same ids whatever the run.
//!
//! What makes a second calm, and what a report says, is the detector's;
//! when and under which id it reports is this module's.

use serde::{Deserialize, Serialize};

use crate::hash;
use crate::model::Millis;

/// What a condition's report is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Open,
    Update,
    Close,
}

/// How often a condition in progress is reported, and how long it must
/// stay calm to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    pub update_every_ms: i64,
    /// Calm seconds in a row that close it (at least one).
    pub hold_s: u32,
}

/// The reporting state of a condition in progress. (Its start is the
/// detector's, which says when it began.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    last_report_ms: Millis,
    calm_s: u32,
}

impl Episode {
    /// A condition opened by the report at `time_ms`.
    pub fn opened(time_ms: Millis) -> Self {
        Episode {
            last_report_ms: time_ms,
            calm_s: 0,
        }
    }

    /// One more second judged, ending at `time_ms`, calm or not: whether
    /// to report the condition again, close it, or say nothing.
    pub fn step(&mut self, time_ms: Millis, calm: bool, cadence: Cadence) -> Option<Transition> {
        self.calm_s = if calm { self.calm_s + 1 } else { 0 };
        if self.calm_s >= cadence.hold_s.max(1) {
            Some(Transition::Close)
        } else if time_ms - self.last_report_ms >= cadence.update_every_ms {
            self.last_report_ms = time_ms;
            Some(Transition::Update)
        } else {
            None
        }
    }
}

/// The id of a report of `family` (`storm`, `incident`) named `phase`
/// about `subject`: a hash of them, of when the condition started and of
/// the report's time, so the same input reports under the same ids.
pub fn event_id(
    family: &str,
    phase: &str,
    subject: &str,
    start_ms: Millis,
    time_ms: Millis,
) -> String {
    hash::event_id(
        &format!("{family}.{phase}"),
        Some(subject),
        hash::storm(start_ms, time_ms),
    )
}

/// Adds counted names to a top list, keeping the `limit` heaviest (ties by
/// name, so the list does not depend on arrival order).
pub fn merge_top<N: AsRef<str> + Into<String>>(
    into: &mut Vec<(String, u64)>,
    from: impl IntoIterator<Item = (N, u64)>,
    limit: usize,
) {
    add_counts(into, from);
    into.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    into.truncate(limit);
}

/// Adds counted names to a list of counted names, a name once.
pub fn add_counts<N: AsRef<str> + Into<String>>(
    into: &mut Vec<(String, u64)>,
    from: impl IntoIterator<Item = (N, u64)>,
) {
    for (name, n) in from {
        match into.iter_mut().find(|(k, _)| k.as_str() == name.as_ref()) {
            Some(e) => e.1 += n,
            None => into.push((name.into(), n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CADENCE: Cadence = Cadence {
        update_every_ms: 3_000,
        hold_s: 2,
    };

    #[test]
    fn a_condition_is_reported_at_most_every_update_every_and_closes_after_hold_calm_seconds() {
        let mut e = Episode::opened(1_000);
        let steps: Vec<_> = [
            (2_000, false),
            (3_000, false),
            (4_000, false),
            (5_000, true),
            (6_000, false),
            (7_000, true),
            (8_000, true),
        ]
        .into_iter()
        .map(|(t, calm)| e.step(t, calm, CADENCE))
        .collect();
        assert_eq!(
            steps,
            [
                None,
                None,
                Some(Transition::Update),
                None,
                None,
                // One calm second does not close it (it is reported, as
                // 3 s have passed); a second one in a row does.
                Some(Transition::Update),
                Some(Transition::Close),
            ]
        );
    }

    #[test]
    fn ids_depend_on_the_family_phase_subject_and_times_only() {
        let id = event_id("incident", "opened", "orders", 1_000, 5_000);
        assert_eq!(id, event_id("incident", "opened", "orders", 1_000, 5_000));
        for other in [
            event_id("storm", "opened", "orders", 1_000, 5_000),
            event_id("incident", "updated", "orders", 1_000, 5_000),
            event_id("incident", "opened", "users", 1_000, 5_000),
            event_id("incident", "opened", "orders", 2_000, 5_000),
            event_id("incident", "opened", "orders", 1_000, 6_000),
        ] {
            assert_ne!(id, other);
        }
    }

    #[test]
    fn a_top_list_keeps_the_heaviest_names_ties_broken_by_name() {
        let mut top = vec![("b".to_string(), 3)];
        merge_top(&mut top, [("a", 3), ("c", 1), ("b", 1)], 2);
        assert_eq!(top, [("b".to_string(), 4), ("a".to_string(), 3)]);
    }
}
