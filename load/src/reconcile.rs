//! Reconciliation of published ids against what a stage produced (pure): which published ids
//! never showed up (lost), which showed up more than once (duplicated), and which ids the stage
//! produced that nobody published (strays, e.g. another run's leftovers).

use serde::Serialize;
use std::collections::HashMap;
use std::hash::Hash;

/// How many ids of each kind are listed in reports (the counts are always complete).
pub const LISTED: usize = 20;

/// One stage's reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageReconciliation<T> {
    /// The stage, e.g. `feature_a (tap)` or `db rows B`.
    pub stage: String,
    /// Ids published.
    pub published: usize,
    /// Published ids seen at least once.
    pub seen: usize,
    /// Published ids never seen (first [`LISTED`]).
    pub lost: Vec<T>,
    /// How many published ids were never seen.
    pub lost_count: usize,
    /// Published ids seen more than once (first [`LISTED`]).
    pub duplicated: Vec<T>,
    /// How many published ids were seen more than once.
    pub duplicated_count: usize,
    /// Seen ids that were never published.
    pub stray_count: usize,
}

impl<T> StageReconciliation<T> {
    /// Neither lost nor duplicated.
    pub fn is_clean(&self) -> bool {
        self.lost_count == 0 && self.duplicated_count == 0
    }
}

/// Reconciles `published` (in publish order) against every id the stage produced.
pub fn reconcile<T>(stage: &str, published: &[T], seen: impl IntoIterator<Item = T>) -> StageReconciliation<T>
where
    T: Eq + Hash + Clone,
{
    let mut counts: HashMap<T, usize> = published.iter().map(|id| (id.clone(), 0)).collect();
    let mut stray_count = 0;
    for id in seen {
        match counts.get_mut(&id) {
            Some(c) => *c += 1,
            None => stray_count += 1,
        }
    }
    let (mut lost, mut duplicated) = (Vec::new(), Vec::new());
    let (mut lost_count, mut duplicated_count) = (0, 0);
    for id in published {
        match counts.get(id).copied().unwrap_or(0) {
            0 => {
                lost_count += 1;
                if lost.len() < LISTED {
                    lost.push(id.clone());
                }
            }
            1 => {}
            _ => {
                duplicated_count += 1;
                if duplicated.len() < LISTED {
                    duplicated.push(id.clone());
                }
            }
        }
    }
    StageReconciliation {
        stage: stage.to_string(),
        published: published.len(),
        seen: counts.values().filter(|c| **c > 0).count(),
        lost,
        lost_count,
        duplicated,
        duplicated_count,
        stray_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::clean(&[1, 2, 3], &[3, 1, 2], 0, 0, 0)]
    #[case::lost(&[1, 2, 3], &[1], 2, 0, 0)]
    #[case::duplicated(&[1, 2, 3], &[1, 2, 2, 3, 3, 3], 0, 2, 0)]
    #[case::stray(&[1], &[1, 9, 9], 0, 0, 2)]
    #[case::nothing_published(&[], &[4], 0, 0, 1)]
    fn counts_lost_duplicated_and_strays(
        #[case] published: &[u32],
        #[case] seen: &[u32],
        #[case] lost: usize,
        #[case] dup: usize,
        #[case] stray: usize,
    ) {
        let r = reconcile("s", published, seen.iter().copied());
        assert_eq!((r.lost_count, r.duplicated_count, r.stray_count), (lost, dup, stray), "{r:?}");
        assert_eq!(r.is_clean(), lost == 0 && dup == 0);
        assert_eq!(r.seen + r.lost_count, r.published);
    }

    #[test]
    fn lists_are_capped_but_counts_are_complete() {
        let published: Vec<u32> = (0..100).collect();
        let r = reconcile("s", &published, std::iter::empty());
        assert_eq!((r.lost.len(), r.lost_count), (LISTED, 100));
        assert_eq!(r.lost[..3], [0, 1, 2], "in publish order");
    }
}
