//! Fixed time slots that make the two sliding windows: one-second slots for the last 10 s and
//! ten-second slots for the last minute. A series keeps at most 11 + 7 slots, and only the ones
//! something was added to, whatever the message rate.

use std::collections::VecDeque;

/// The windows every figure is given for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Window {
    /// The current second and the 9 before it.
    Short,
    /// The current ten seconds and the 50 before them (50 to 60 s).
    Long,
}

impl Window {
    pub const ALL: [Window; 2] = [Window::Short, Window::Long];

    /// How much time the window covers, at most.
    pub fn length(self) -> std::time::Duration {
        std::time::Duration::from_secs(match self {
            Window::Short => FINE_SLOTS,
            Window::Long => COARSE_SECONDS * COARSE_SLOTS,
        })
    }
}

const FINE_SLOTS: u64 = 10;
const COARSE_SECONDS: u64 = 10;
const COARSE_SLOTS: u64 = 6;

/// What can be kept in a slot: summed as it arrives.
pub trait Slot: Clone + Default {
    fn merge(&mut self, other: &Self);
}

impl Slot for f64 {
    fn merge(&mut self, other: &Self) {
        *self += other;
    }
}

#[derive(Debug, Clone)]
pub struct Slots<T> {
    /// (second, sum), oldest first.
    fine: VecDeque<(u64, T)>,
    /// (second / 10, sum), oldest first.
    coarse: VecDeque<(u64, T)>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            fine: VecDeque::new(),
            coarse: VecDeque::new(),
        }
    }
}

impl<T: Slot> Slots<T> {
    /// Adds `value` at second `sec` (seconds since the aggregator's epoch).
    pub fn add(&mut self, sec: u64, value: &T) {
        push(&mut self.fine, sec, value);
        push(&mut self.coarse, sec / COARSE_SECONDS, value);
        let newest = self.fine.back().map_or(sec, |(i, _)| *i);
        self.prune(newest);
    }

    /// Drops the slots that no window at `sec` includes.
    pub fn prune(&mut self, sec: u64) {
        while self.fine.front().is_some_and(|(i, _)| !in_fine(*i, sec)) {
            self.fine.pop_front();
        }
        while self
            .coarse
            .front()
            .is_some_and(|(i, _)| !in_coarse(*i, sec))
        {
            self.coarse.pop_front();
        }
    }

    /// The sum of the slots `window` includes at second `sec`.
    pub fn sum(&self, window: Window, sec: u64) -> T {
        let mut out = T::default();
        match window {
            Window::Short => self
                .fine
                .iter()
                .filter(|(i, _)| in_fine(*i, sec))
                .for_each(|(_, v)| out.merge(v)),
            Window::Long => self
                .coarse
                .iter()
                .filter(|(i, _)| in_coarse(*i, sec))
                .for_each(|(_, v)| out.merge(v)),
        }
        out
    }

    /// The sum of the short window's slots at second `sec` that `keep` accepts (by slot number,
    /// a second since the epoch).
    pub fn sum_short_where(&self, sec: u64, keep: impl Fn(u64) -> bool) -> T {
        let mut out = T::default();
        self.fine
            .iter()
            .filter(|(i, _)| in_fine(*i, sec) && keep(*i))
            .for_each(|(_, v)| out.merge(v));
        out
    }

    /// What one-second slot `i` holds, if it is still kept.
    pub fn short_slot(&self, i: u64) -> Option<&T> {
        self.fine.iter().find(|(j, _)| *j == i).map(|(_, v)| v)
    }

    /// Whether no window at `sec` includes anything.
    pub fn is_empty_at(&self, sec: u64) -> bool {
        !self.coarse.iter().any(|(i, _)| in_coarse(*i, sec))
    }
}

fn in_fine(slot: u64, sec: u64) -> bool {
    slot <= sec && slot + FINE_SLOTS > sec
}

fn in_coarse(slot: u64, sec: u64) -> bool {
    let now = sec / COARSE_SECONDS;
    slot <= now && slot + COARSE_SLOTS > now
}

/// Adds into the last slot if it is slot `i` (or later: a clock that went back adds to the
/// newest slot rather than growing the queue), else starts slot `i`.
fn push<T: Slot>(q: &mut VecDeque<(u64, T)>, i: u64, value: &T) {
    match q.back_mut() {
        Some((last, sum)) if *last >= i => sum.merge(value),
        _ => q.push_back((i, value.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_short_window_is_ten_seconds_and_the_long_one_fifty_to_sixty() {
        let mut s = Slots::<f64>::default();
        for sec in 0..120 {
            s.add(sec, &1.0);
        }
        assert_eq!(s.sum(Window::Short, 119), 10.0);
        // Slots 6..=11 (seconds 60..119).
        assert_eq!(s.sum(Window::Long, 119), 60.0);
        assert_eq!(
            s.sum(Window::Long, 120),
            50.0,
            "a new ten-second slot has begun"
        );
        assert_eq!(s.sum(Window::Short, 125), 4.0, "116..=119, then nothing");
        assert_eq!(s.sum(Window::Short, 200), 0.0);
        assert!(s.is_empty_at(170), "seconds 120..=179 hold nothing");
        assert!(!s.is_empty_at(169));
    }

    #[test]
    fn a_part_of_the_short_window_sums_only_the_slots_it_keeps() {
        let mut s = Slots::<f64>::default();
        for sec in 0..20 {
            s.add(sec, &1.0);
        }
        assert_eq!(s.sum_short_where(19, |i| i >= 15), 5.0);
        assert_eq!(
            s.sum_short_where(19, |_| true),
            s.sum(Window::Short, 19),
            "all of it"
        );
        assert_eq!(s.sum_short_where(19, |i| i < 10), 0.0, "outside the window");
        assert_eq!(s.short_slot(19), Some(&1.0));
        assert_eq!(s.short_slot(5), None, "pruned");
    }

    #[test]
    fn slots_stay_bounded_whatever_the_rate() {
        let mut s = Slots::<f64>::default();
        for i in 0..100_000u64 {
            s.add(i / 1000, &1.0);
        }
        assert!(s.fine.len() <= 10 && s.coarse.len() <= 6, "{s:?}");
        assert_eq!(s.sum(Window::Short, 99), 10_000.0);
    }

    #[test]
    fn a_clock_that_goes_back_adds_to_the_newest_slot() {
        let mut s = Slots::<f64>::default();
        s.add(50, &1.0);
        s.add(40, &1.0);
        assert_eq!(s.fine.len(), 1);
        assert_eq!(s.sum(Window::Short, 50), 2.0);
    }
}
