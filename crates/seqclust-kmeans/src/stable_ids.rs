//! Stable cluster ids across runs: a new run's centroids are matched to the previous run's by
//! minimum total squared distance (the Hungarian method, `pathfinding::kuhn_munkres_min`), so
//! clusters that did not change keep their ids.

use pathfinding::matrix::Matrix;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::matrix::{Centroids, sq_dist};

/// How a new run's clusters map to stable ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdMatch {
    /// Stable id of each new cluster: the matched previous id, or a fresh id from `k_previous`
    /// on for clusters with no counterpart (when k grew).
    pub ids: Vec<u32>,
    /// Squared distance of each new centroid to its matched previous one (`None` if fresh).
    pub shift: Vec<Option<f32>>,
    /// Previous ids with no counterpart (when k shrank).
    pub retired: Vec<u32>,
}

/// Matches `current` centroids to `previous` ones.
pub fn match_ids(previous: &Centroids, current: &Centroids) -> Result<IdMatch> {
    if previous.d() != current.d() {
        return Err(Error::Mismatch(format!(
            "previous centroids have dimension {}, current {}",
            previous.d(),
            current.d()
        )));
    }
    let (kp, kc) = (previous.k(), current.k());
    let cost: Vec<f32> = (0..kc)
        .flat_map(|c| (0..kp).map(move |p| (c, p)))
        .map(|(c, p)| sq_dist(current.row(c), previous.row(p)))
        .collect();
    let max = cost
        .iter()
        .cloned()
        .fold(0.0f32, f32::max)
        .max(f32::MIN_POSITIVE);
    // integer costs for the solver: the order of distances is what matters
    let scaled = |v: f32| (f64::from(v) / f64::from(max) * 1e12).round() as i64;
    let mut ids = vec![u32::MAX; kc];
    if kc <= kp {
        let m = Matrix::from_vec(kc, kp, cost.iter().map(|&v| scaled(v)).collect())
            .map_err(|e| Error::Mismatch(format!("{e:?}")))?;
        let (_, assign) = pathfinding::kuhn_munkres::kuhn_munkres_min(&m);
        for (c, p) in assign.into_iter().enumerate() {
            ids[c] = p as u32;
        }
    } else {
        let t: Vec<i64> = (0..kp)
            .flat_map(|p| (0..kc).map(move |c| (p, c)))
            .map(|(p, c)| scaled(cost[c * kp + p]))
            .collect();
        let m = Matrix::from_vec(kp, kc, t).map_err(|e| Error::Mismatch(format!("{e:?}")))?;
        let (_, assign) = pathfinding::kuhn_munkres::kuhn_munkres_min(&m);
        for (p, c) in assign.into_iter().enumerate() {
            ids[c] = p as u32;
        }
        for (fresh, id) in (kp as u32..).zip(ids.iter_mut().filter(|i| **i == u32::MAX)) {
            *id = fresh;
        }
    }
    let shift = (0..kc)
        .map(|c| ((ids[c] as usize) < kp).then(|| cost[c * kp + ids[c] as usize]))
        .collect();
    let used: std::collections::HashSet<u32> = ids.iter().copied().collect();
    let retired = (0..kp as u32).filter(|p| !used.contains(p)).collect();
    Ok(IdMatch {
        ids,
        shift,
        retired,
    })
}

/// Share of points whose stable cluster id changed between two runs (labels already mapped to
/// stable ids).
pub fn moved_mass(previous: &[u32], current: &[u32]) -> f64 {
    if previous.is_empty() {
        return 0.0;
    }
    previous.iter().zip(current).filter(|(a, b)| a != b).count() as f64 / previous.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permuted_centroids_get_their_old_ids() {
        let prev = Centroids::new(vec![0.0, 0.0, 10.0, 0.0, 0.0, 10.0], 2).unwrap();
        let cur = Centroids::new(vec![0.1, 9.9, 0.2, 0.0, 9.8, 0.1], 2).unwrap();
        let m = match_ids(&prev, &cur).unwrap();
        assert_eq!(m.ids, vec![2, 0, 1]);
        assert!(m.retired.is_empty());
        // one more cluster: the new one gets a fresh id
        let grown = Centroids::new(vec![0.1, 9.9, 50.0, 50.0, 0.2, 0.0, 9.8, 0.1], 2).unwrap();
        let m = match_ids(&prev, &grown).unwrap();
        assert_eq!(m.ids, vec![2, 3, 0, 1]);
        assert_eq!(m.shift[1], None);
        // one fewer: the unmatched id is retired
        let shrunk = Centroids::new(vec![9.8, 0.1, 0.1, 9.9], 2).unwrap();
        let m = match_ids(&prev, &shrunk).unwrap();
        assert_eq!((m.ids, m.retired), (vec![1, 2], vec![0]));
        assert_eq!(moved_mass(&[0, 1, 2, 2], &[0, 1, 1, 2]), 0.25);
        assert!(match_ids(&prev, &Centroids::new(vec![1.0], 1).unwrap()).is_err());
    }
}
