//! Weighted round robin for the proxy's pools: the order in which a pool's backends take turns,
//! each as often as its weight and spread evenly, built with the snapshot.
//!
//! The order is a list of backend indexes that a pool's counter walks, so a pick stays one
//! atomic add and one load whatever the weights (nginx and HAProxy keep a current weight per
//! backend instead, under their lock; our workers share the pool without one). Turns are dealt
//! earliest deadline first: backend i of n, of weight w, has its k-th turn due at (k + φ) / w
//! with its phase φ = (i + 1) / (n + 1), so weights 3 and 1 give `a a b a`, never `a a a b`, and
//! backends of one weight are not all due at once (1, 1, 1, 5 give `d a d b d c d d`).
use std::{cmp::Ordering, collections::BinaryHeap};

/// The most turns an order holds (16 KiB of indexes). Weights whose sum, once divided by their
/// greatest common divisor, is larger are scaled down to fit, each keeping at least one turn:
/// shares are then within about one turn in 4,096 of the weights'.
pub const MAX_TURNS: u64 = 4096;

/// The order of turns for backends of `weights` (all above 0): indexes into `weights`. Empty
/// when every weight is the same: the pool then takes its backends in plain rotation.
pub fn order(weights: &[u32]) -> Vec<u32> {
    if weights.windows(2).all(|w| w[0] == w[1]) {
        return Vec::new();
    }
    let divisor = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w))).max(1);
    let mut turns: Vec<u64> = weights.iter().map(|&w| u64::from(w) / divisor).collect();
    let total: u64 = turns.iter().sum();
    let most = MAX_TURNS.max(weights.len() as u64);
    if total > most {
        for t in &mut turns {
            *t = (*t * most / total).max(1);
        }
    }
    let total: u64 = turns.iter().sum();
    let phases = weights.len() as u64 + 1;
    let mut due: BinaryHeap<Turn> =
        turns.iter().enumerate().map(|(index, &weight)| Turn { taken: 0, weight, index, phases }).collect();
    let mut order = Vec::with_capacity(total as usize);
    while let Some(mut next) = due.pop() {
        order.push(next.index as u32);
        next.taken += 1;
        if next.taken < next.weight {
            due.push(next);
        }
    }
    order
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A backend's next turn, due at (taken + (index + 1) / phases) / weight.
#[derive(PartialEq, Eq)]
struct Turn {
    taken: u64,
    weight: u64,
    index: usize,
    /// The number of backends, plus one.
    phases: u64,
}

impl Turn {
    /// When it is due, times `phases`: (taken · phases + index + 1) / weight, as a fraction.
    fn due(&self) -> (u128, u128) {
        ((self.taken * self.phases + self.index as u64 + 1).into(), self.weight.into())
    }
}

impl Ord for Turn {
    /// The heap pops the greatest: the earliest due, then the lowest index.
    fn cmp(&self, other: &Turn) -> Ordering {
        let ((mine, my_weight), (theirs, their_weight)) = (self.due(), other.due());
        (theirs * my_weight).cmp(&(mine * their_weight)).then(other.index.cmp(&self.index))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Turn) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(order: &[u32], n: usize) -> Vec<usize> {
        (0..n).map(|i| order.iter().filter(|&&o| o as usize == i).count()).collect()
    }

    #[test]
    fn equal_weights_need_no_order() {
        assert!(order(&[100, 100, 100]).is_empty());
        assert!(order(&[7]).is_empty());
        assert!(order(&[]).is_empty());
    }

    #[test]
    fn each_backend_takes_turns_by_its_weight_spread_through_the_order() {
        assert_eq!(order(&[300, 100]), [0, 0, 1, 0]);
        let o = order(&[100, 200, 500]);
        assert_eq!(counts(&o, 3), [1, 2, 5]);
        // No backend takes more turns in a row than its share calls for.
        assert!(!o.windows(3).any(|w| w[0] == w[1] && w[1] == w[2] && w[0] != 2), "{o:?}");
        assert_eq!(order(&[1, 1, 1, 5]), [3, 0, 3, 1, 3, 2, 3, 3], "the light ones not all at once");
    }

    #[test]
    fn large_weights_are_scaled_to_fit_and_none_loses_its_turn() {
        let o = order(&[65_535, 1]);
        assert!(o.len() as u64 <= MAX_TURNS, "{}", o.len());
        assert_eq!(counts(&o, 2)[1], 1);
        let o = order(&[65_535, 65_534, 3, 60_000]);
        assert!(o.len() as u64 <= MAX_TURNS);
        let c = counts(&o, 4);
        assert!(c[2] >= 1, "{c:?}");
        let share = c[3] as f64 / o.len() as f64;
        let want = 60_000.0 / (65_535.0 + 65_534.0 + 3.0 + 60_000.0);
        assert!((share - want).abs() < 0.001, "{share} against {want}");
    }

    #[test]
    fn more_backends_than_turns_each_get_one() {
        let mut weights = vec![1; 5000];
        weights[0] = 2;
        let o = order(&weights);
        assert!(o.len() <= 5001, "{}", o.len());
        assert!(counts(&o, 5000).iter().all(|&c| c >= 1));
    }
}
