//! Time: an injectable wall clock, the event-time watermark over input
//! partitions (DESIGN.md section 6), and the queue of deadline timers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::model::Millis;

/// The watermark once every input has ended: every verdict is final.
pub const END_OF_TIME: Millis = Millis::MAX;

/// Wall-clock time, injected so that tests and replays are deterministic.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> Millis;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as Millis)
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start_ms: Millis) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start_ms)))
    }

    pub fn advance(&self, ms: Millis) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone)]
struct Partition {
    /// Highest event time seen.
    max_ts: Option<Millis>,
    /// Wall time of the last record (or of registration).
    last_record_wall: Millis,
    /// Read up to its end (said by the source); only then can it be idle.
    caught_up: bool,
    ended: bool,
}

/// The watermark: the minimum over active input partitions of the highest
/// event time seen, minus the allowed lateness. It never goes back.
///
/// A partition that has seen nothing yet holds the watermark back (its first
/// record may be old). With an idle timeout (live mode), a partition that is
/// caught up (read to its end) and without records for that long stops
/// holding it back, and when every partition is idle the watermark follows
/// the wall clock minus the lateness. A partition
/// that has ended (end of file) no longer counts; once all have ended the
/// watermark is [`END_OF_TIME`].
#[derive(Debug, Clone)]
pub struct Watermarks {
    lateness_ms: Millis,
    idle_timeout_ms: Option<Millis>,
    partitions: Vec<Partition>,
    current: Millis,
}

impl Watermarks {
    /// `idle_timeout_ms`: `None` for finite inputs (files), where waiting is
    /// always right.
    pub fn new(lateness_ms: Millis, idle_timeout_ms: Option<Millis>) -> Self {
        Watermarks {
            lateness_ms,
            idle_timeout_ms,
            partitions: Vec::new(),
            current: Millis::MIN,
        }
    }

    /// Registers an input partition and returns its index.
    pub fn add_partition(&mut self, now_ms: Millis) -> usize {
        self.partitions.push(Partition {
            max_ts: None,
            last_record_wall: now_ms,
            caught_up: false,
            ended: false,
        });
        self.partitions.len() - 1
    }

    /// Registers partitions up to index `p`, and (re)opens `p`.
    pub fn open(&mut self, p: usize, now_ms: Millis) {
        while self.partitions.len() <= p {
            self.add_partition(now_ms);
        }
        self.reopen(p, now_ms);
    }

    /// Whether partition `p` has been read up to its end.
    pub fn set_caught_up(&mut self, p: usize, caught_up: bool) {
        if let Some(part) = self.partitions.get_mut(p) {
            part.caught_up = caught_up;
        }
    }

    /// A record of partition `p` with event time `ts`, seen at wall time `now_ms`.
    pub fn observe(&mut self, p: usize, ts: Millis, now_ms: Millis) {
        while self.partitions.len() <= p {
            self.add_partition(now_ms);
        }
        let part = &mut self.partitions[p];
        part.max_ts = Some(part.max_ts.map_or(ts, |m| m.max(ts)));
        part.last_record_wall = now_ms;
    }

    /// Partition `p` has no more records (end of file, revoked partition).
    pub fn end(&mut self, p: usize) {
        if let Some(part) = self.partitions.get_mut(p) {
            part.ended = true;
        }
    }

    /// Partition `p` is active again (a re-assigned Kafka partition).
    fn reopen(&mut self, p: usize, now_ms: Millis) {
        let part = &mut self.partitions[p];
        part.ended = false;
        part.caught_up = false;
        part.last_record_wall = now_ms;
    }

    /// The highest event time partition `p` has shown, if any.
    pub fn event_time(&self, p: usize) -> Option<Millis> {
        self.partitions.get(p).and_then(|part| part.max_ts)
    }

    /// Whether every registered partition has ended.
    pub fn all_ended(&self) -> bool {
        self.partitions.iter().all(|p| p.ended)
    }

    /// Whether a record with event time `ts` arrives behind the watermark.
    pub fn is_late(&self, ts: Millis) -> bool {
        ts < self.current
    }

    pub fn current(&self) -> Millis {
        self.current
    }

    /// Recomputes the watermark at wall time `now_ms` and returns it.
    pub fn update(&mut self, now_ms: Millis) -> Millis {
        let idle = |p: &Partition| {
            p.caught_up
                && self
                    .idle_timeout_ms
                    .is_some_and(|t| now_ms.saturating_sub(p.last_record_wall) >= t)
        };
        let mut active = self.partitions.iter().filter(|p| !p.ended).peekable();
        let candidate = if active.peek().is_none() {
            // Finite inputs have all ended; a live source with nothing
            // assigned (yet) says nothing about time.
            if self.idle_timeout_ms.is_none() {
                END_OF_TIME
            } else {
                self.current
            }
        } else {
            let holding: Vec<&Partition> = active.filter(|p| !idle(p)).collect();
            if holding.is_empty() {
                now_ms.saturating_sub(self.lateness_ms)
            } else if holding.iter().any(|p| p.max_ts.is_none()) {
                Millis::MIN
            } else {
                holding
                    .iter()
                    .filter_map(|p| p.max_ts)
                    .min()
                    .map_or(Millis::MIN, |m| m.saturating_sub(self.lateness_ms))
            }
        };
        self.current = self.current.max(candidate);
        self.current
    }
}

/// Due times of keys, earliest first: one bucket of keys per due time, so
/// that queueing and firing never compare keys, and a watermark that passes
/// a due time takes its keys in one step. Within a due time the keys come
/// out last queued first. A key may be queued more than once; the owner
/// ignores entries that no longer match the key's armed time.
///
/// The buckets of due times less than [`WHEEL_MS`] apart are a ring indexed
/// by the due time (a timing wheel): queueing a timer there is an index,
/// whatever the number of timers pending. A timer due outside the ring's
/// span when it is queued (much earlier or later than the others) waits in
/// an ordered map instead, and the queue takes the earlier of the two (at
/// one due time, those of the map first).
#[derive(Debug)]
pub struct TimerQueue<K> {
    /// Bucket `due % WHEEL_MS` holds the timers due at `due`, for every
    /// `due` from `first` through `last`; allocated on first use.
    wheel: Vec<Vec<K>>,
    /// The earliest due time in the wheel (its bucket is not empty while
    /// the wheel holds any timer).
    first: Millis,
    /// No due time in the wheel is later (an upper bound: it is not moved
    /// back as timers fire).
    last: Millis,
    in_wheel: usize,
    /// Timers due outside the wheel's span when queued.
    outside: BTreeMap<Millis, Vec<K>>,
    len: usize,
}

/// Milliseconds of due times the wheel spans: deadlines, lateness and late
/// windows of seconds fit in it many times over.
const WHEEL_MS: Millis = 1 << 14;

/// The most due times [`TimerQueue::peek_ahead`] looks through.
const PEEK_BUCKETS: Millis = 64;

impl<K> Default for TimerQueue<K> {
    fn default() -> Self {
        TimerQueue {
            wheel: Vec::new(),
            first: 0,
            last: 0,
            in_wheel: 0,
            outside: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<K> TimerQueue<K> {
    pub fn push(&mut self, due: Millis, key: K) {
        self.len += 1;
        let (first, last) = if self.in_wheel == 0 {
            (due, due)
        } else {
            (self.first.min(due), self.last.max(due))
        };
        if last.abs_diff(first) >= WHEEL_MS as u64 {
            self.outside.entry(due).or_default().push(key);
            return;
        }
        if self.wheel.is_empty() {
            self.wheel.resize_with(WHEEL_MS as usize, Vec::new);
        }
        (self.first, self.last) = (first, last);
        self.in_wheel += 1;
        self.wheel[bucket(due)].push(key);
    }

    /// Removes and returns an earliest timer due at or before `wm`.
    pub fn pop_due(&mut self, wm: Millis) -> Option<(Millis, K)> {
        let due = self.first_due().filter(|due| *due <= wm)?;
        if let Some(mut outside) = self.outside.first_entry().filter(|e| *e.key() == due) {
            let key = outside.get_mut().pop().expect("no empty bucket");
            if outside.get().is_empty() {
                outside.remove();
            }
            self.len -= 1;
            return Some((due, key));
        }
        let keys = &mut self.wheel[bucket(due)];
        let key = keys.pop().expect("the first bucket is not empty");
        if keys.is_empty() {
            // A bucket's room is not kept for the due time that comes to
            // it a turn of the ring later.
            *keys = Vec::new();
        }
        self.len -= 1;
        self.in_wheel -= 1;
        self.find_first();
        Some((due, key))
    }

    /// The timer `n` places after the one [`TimerQueue::pop_due`] returns
    /// next at `wm`, if the wheel holds it within [`PEEK_BUCKETS`] due
    /// times (timers outside the wheel are not looked at): a hint of what
    /// firing reads soon, for the CPU to load ahead.
    pub fn peek_ahead(&self, wm: Millis, mut n: usize) -> Option<&K> {
        if self.in_wheel == 0 {
            return None;
        }
        let end = wm
            .min(self.last)
            .min(self.first.saturating_add(PEEK_BUCKETS));
        let mut due = self.first;
        while due <= end {
            let keys = &self.wheel[bucket(due)];
            if n < keys.len() {
                // Popped from the end.
                return keys.get(keys.len() - 1 - n);
            }
            n -= keys.len();
            due += 1;
        }
        None
    }

    /// Moves `first` to the earliest bucket with timers, if any.
    fn find_first(&mut self) {
        if self.in_wheel == 0 {
            return;
        }
        while self.wheel[bucket(self.first)].is_empty() {
            self.first += 1;
        }
    }

    /// The due time of the earliest timer.
    pub fn first_due(&self) -> Option<Millis> {
        let in_wheel = (self.in_wheel > 0).then_some(self.first);
        let outside = self.outside.first_key_value().map(|(due, _)| *due);
        match (in_wheel, outside) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a timer is due at or before `wm`.
    pub fn is_due(&self, wm: Millis) -> bool {
        self.first_due().is_some_and(|due| due <= wm)
    }

    /// Keeps only the timers whose key `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        self.in_wheel = 0;
        for keys in &mut self.wheel {
            keys.retain(&keep);
            self.in_wheel += keys.len();
        }
        let mut outside = 0;
        self.outside.retain(|_, keys| {
            keys.retain(&keep);
            outside += keys.len();
            !keys.is_empty()
        });
        self.len = self.in_wheel + outside;
        self.find_first();
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The wheel's bucket of a due time.
fn bucket(due: Millis) -> usize {
    due.rem_euclid(WHEEL_MS) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_is_the_slowest_partition_minus_lateness() {
        let mut w = Watermarks::new(5, None);
        let a = w.add_partition(0);
        let b = w.add_partition(0);
        w.observe(a, 100, 0);
        assert_eq!(w.update(0), Millis::MIN, "b has not spoken yet");
        w.observe(b, 50, 0);
        assert_eq!(w.update(0), 45);
        w.observe(b, 200, 0);
        assert_eq!(w.update(0), 95);
        assert!(w.is_late(90) && !w.is_late(95));
        w.end(a);
        assert_eq!(w.update(0), 195);
        w.end(b);
        assert_eq!(w.update(0), END_OF_TIME);
    }

    #[test]
    fn watermark_never_goes_back() {
        let mut w = Watermarks::new(0, None);
        let a = w.add_partition(0);
        w.observe(a, 100, 0);
        assert_eq!(w.update(0), 100);
        w.add_partition(0);
        assert_eq!(w.update(0), 100);
    }

    #[test]
    fn idle_partitions_stop_holding_and_all_idle_follows_the_clock() {
        let clock = ManualClock::new(1_000);
        let mut w = Watermarks::new(10, Some(100));
        let a = w.add_partition(clock.now_ms());
        let b = w.add_partition(clock.now_ms());
        w.observe(a, 500, clock.now_ms());
        assert_eq!(w.update(clock.now_ms()), Millis::MIN);
        clock.advance(60);
        w.observe(a, 520, clock.now_ms());
        clock.advance(50);
        assert_eq!(
            w.update(clock.now_ms()),
            Millis::MIN,
            "b is silent but not known to be read to its end: it may be lagging"
        );
        w.set_caught_up(b, true);
        // b caught up and silent for 110 ms: only a holds.
        assert_eq!(w.update(clock.now_ms()), 510);
        clock.advance(200);
        assert_eq!(w.update(clock.now_ms()), 510, "a is not caught up");
        w.set_caught_up(a, true);
        // Both idle: wall clock minus lateness.
        assert_eq!(w.update(clock.now_ms()), 1_300);
    }

    #[test]
    fn partitions_can_be_assigned_revoked_and_reassigned() {
        let mut w = Watermarks::new(0, Some(1_000));
        assert_eq!(
            w.update(0),
            Millis::MIN,
            "a live source without partitions holds time"
        );
        w.open(2, 0);
        assert!(!w.all_ended());
        for p in 0..3 {
            w.observe(p, 100 + p as i64, 0);
        }
        assert_eq!(w.update(0), 100);
        w.end(0);
        assert_eq!(w.update(0), 101);
        w.open(0, 0);
        w.observe(0, 300, 0);
        assert_eq!(w.update(0), 101, "never goes back, and 1 still holds");
        for p in 0..3 {
            w.end(p);
        }
        assert!(w.all_ended());
        assert_eq!(
            w.update(0),
            101,
            "revoking everything is not the end of time"
        );
    }

    #[test]
    fn timers_pop_in_due_order_up_to_the_watermark() {
        let mut q: TimerQueue<Arc<str>> = TimerQueue::default();
        q.push(30, Arc::from("c"));
        q.push(10, Arc::from("a"));
        q.push(20, Arc::from("b"));
        q.push(15, Arc::from("x"));
        q.retain(|k| k.as_ref() != "x");
        assert_eq!(q.pop_due(25).map(|t| t.0), Some(10));
        assert_eq!(q.pop_due(25).map(|t| t.0), Some(20));
        assert_eq!(q.pop_due(25), None);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn timers_inside_and_outside_the_wheel_pop_in_due_order() {
        let mut q: TimerQueue<u32> = TimerQueue::default();
        let start = 1_700_000_000_000;
        // Within the wheel's span, in no order, one time twice; then one
        // far later, one far earlier, and one at the end of time.
        for (i, due) in [5, 3, WHEEL_MS - 1, 3, 0].into_iter().enumerate() {
            q.push(start + due, i as u32);
        }
        q.push(start + 10 * WHEEL_MS, 10);
        q.push(start - 10 * WHEEL_MS, 11);
        q.push(END_OF_TIME, 12);
        assert_eq!(q.len(), 8);
        assert_eq!(q.first_due(), Some(start - 10 * WHEEL_MS));
        assert!(!q.is_due(start - 10 * WHEEL_MS - 1));
        let mut popped = Vec::new();
        while let Some(t) = q.pop_due(start + 10 * WHEEL_MS) {
            popped.push(t);
        }
        let expected = [
            (start - 10 * WHEEL_MS, 11),
            (start, 4),
            (start + 3, 3),
            (start + 3, 1),
            (start + 5, 0),
            (start + WHEEL_MS - 1, 2),
            (start + 10 * WHEEL_MS, 10),
        ];
        assert_eq!(popped, expected, "earliest first, last queued first");
        assert_eq!((q.len(), q.first_due()), (1, Some(END_OF_TIME)));
    }

    #[test]
    fn the_wheel_turns_as_timers_fire() {
        let mut q: TimerQueue<i64> = TimerQueue::default();
        let (mut fired, steps) = (0, 10 * WHEEL_MS / 100);
        // Timers a second ahead of a watermark that moves on by 100 ms:
        // over ten turns of the ring, each fires once, in order.
        for step in 0..steps {
            let wm = step * 100;
            q.push(wm + 1_000, wm + 1_000);
            q.push(wm + 1_050, wm + 1_050);
            let mut last = Millis::MIN;
            while let Some((due, at)) = q.pop_due(wm) {
                assert!(due == at && due <= wm && due >= last);
                last = due;
                fired += 1;
            }
        }
        assert_eq!(fired + q.len() as i64, 2 * steps);
        let wm = (steps - 1) * 100;
        assert_eq!(q.first_due(), Some(wm + 50), "the earliest not yet due");
        q.retain(|at| at % 100 == 0);
        assert!(
            q.pop_due(END_OF_TIME)
                .is_some_and(|(due, _)| due % 100 == 0)
        );
    }

    #[test]
    fn peeking_ahead_names_the_timers_that_pop_next() {
        let mut q: TimerQueue<u32> = TimerQueue::default();
        // Several timers a due time, gaps between due times, one due past
        // the due times peeking looks through, and (pushed last) one not
        // due yet, far enough ahead to wait outside the wheel.
        let dues = [100, 100, 101, 103, 103, 103, 140, 100 + PEEK_BUCKETS + 5];
        for (i, due) in dues.into_iter().enumerate() {
            q.push(due, i as u32);
        }
        q.push(100 + 2 * WHEEL_MS, 99);
        let wm = 200;
        let peeked: Vec<Option<u32>> = (0..10).map(|n| q.peek_ahead(wm, n).copied()).collect();
        let mut popped = Vec::new();
        while let Some((_, i)) = q.pop_due(wm) {
            popped.push(i);
        }
        assert_eq!(popped.len(), 8, "all but the one not due yet");
        // Within the due times peeking looks through, it names what pops;
        // the timer due past them, and beyond the due ones, it does not.
        let within: Vec<Option<u32>> = popped[..7].iter().copied().map(Some).collect();
        assert_eq!(peeked[..7], within[..]);
        assert_eq!(peeked[7..], [None, None, None]);
        assert_eq!(q.peek_ahead(wm, 0), None, "nothing due is left");
    }
}
