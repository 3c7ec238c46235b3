//! Agglomerative clustering with Ward's criterion over weighted items (centroids with their
//! cluster sizes, or a sample of points with weight 1), by the nearest-neighbour-chain
//! algorithm. The merge cost of clusters A and B is `w_A w_B / (w_A + w_B) · ‖c_A − c_B‖²`;
//! merge heights are reported as `sqrt(2 · cost)`, as SciPy's `linkage(method="ward")` does,
//! so that two single points merge at their Euclidean distance.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::matrix::Points;

/// One merge, in SciPy's linkage convention: ids below `leaves` are items, `leaves + i` is
/// the cluster made by merge `i`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Merge {
    /// First cluster id.
    pub a: usize,
    /// Second cluster id.
    pub b: usize,
    /// Merge height.
    pub height: f64,
    /// Total weight of the merged cluster.
    pub weight: f64,
    /// Items in it.
    pub size: usize,
}

/// A full hierarchy over `leaves` items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dendrogram {
    /// Number of items.
    pub leaves: usize,
    /// `leaves − 1` merges in increasing height.
    pub merges: Vec<Merge>,
}

fn cost(ca: &[f64], wa: f64, cb: &[f64], wb: f64) -> f64 {
    let d2: f64 = ca.iter().zip(cb).map(|(x, y)| (x - y) * (x - y)).sum();
    wa * wb / (wa + wb) * d2
}

/// Ward hierarchy of the items (rows of `points`) with the given positive weights.
pub fn ward(points: &Points<'_>, weights: &[f64]) -> Result<Dendrogram> {
    let m = points.n();
    if weights.len() != m {
        return Err(Error::Mismatch(format!(
            "{} weights for {m} items",
            weights.len()
        )));
    }
    if let Some(i) = weights.iter().position(|w| !(*w > 0.0 && w.is_finite())) {
        return Err(Error::config(
            "weights",
            format!("weight of item {i} must be positive"),
        ));
    }
    let d = points.d();
    let mut cent: Vec<Vec<f64>> = (0..m)
        .map(|i| points.row(i).iter().map(|v| f64::from(*v)).collect())
        .collect();
    let mut w = weights.to_vec();
    let mut size = vec![1usize; m];
    let mut active = vec![true; m];
    // merges as (smallest leaf of A, smallest leaf of B, height, weight, size)
    let mut raw: Vec<(usize, usize, f64, f64, usize)> = Vec::with_capacity(m.saturating_sub(1));
    let mut min_leaf: Vec<usize> = (0..m).collect();
    let mut chain: Vec<usize> = Vec::new();
    let mut remaining = m;
    while remaining > 1 {
        if chain.is_empty() {
            chain.push((0..m).find(|&i| active[i]).unwrap_or(0));
        }
        loop {
            let a = *chain.last().unwrap_or(&0);
            let prev = chain.len().checked_sub(2).map(|i| chain[i]);
            // nearest active neighbour of a; ties prefer the chain's previous element, then the
            // lower index, which keeps the chain from cycling
            let mut best: Option<(f64, usize)> = None;
            for b in (0..m).filter(|&b| b != a && active[b]) {
                let c = cost(&cent[a], w[a], &cent[b], w[b]);
                let better = match best {
                    None => true,
                    Some((bc, bb)) => {
                        c < bc || (c == bc && (Some(b) == prev || (Some(bb) != prev && b < bb)))
                    }
                };
                if better {
                    best = Some((c, b));
                }
            }
            let (c, b) = best.unwrap_or((0.0, a));
            if Some(b) == prev {
                chain.pop();
                chain.pop();
                // merge a and b into slot min(a, b)
                let (keep, gone) = if a < b { (a, b) } else { (b, a) };
                let wt = w[a] + w[b];
                let merged: Vec<f64> = (0..d)
                    .map(|j| (cent[a][j] * w[a] + cent[b][j] * w[b]) / wt)
                    .collect();
                raw.push((
                    min_leaf[a].min(min_leaf[b]),
                    min_leaf[a].max(min_leaf[b]),
                    (2.0 * c).sqrt(),
                    wt,
                    size[a] + size[b],
                ));
                cent[keep] = merged;
                w[keep] = wt;
                size[keep] += size[gone];
                min_leaf[keep] = min_leaf[a].min(min_leaf[b]);
                active[gone] = false;
                remaining -= 1;
                break;
            }
            chain.push(b);
        }
    }
    // SciPy order: by height; ids by union-find over the leaves
    raw.sort_by(|x, y| x.2.total_cmp(&y.2));
    let mut parent: Vec<usize> = (0..m).collect();
    let mut node: Vec<usize> = (0..m).collect();
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    let mut merges = Vec::with_capacity(raw.len());
    for (i, (la, lb, h, wt, sz)) in raw.into_iter().enumerate() {
        let (ra, rb) = (find(&mut parent, la), find(&mut parent, lb));
        let (ia, ib) = (node[ra], node[rb]);
        merges.push(Merge {
            a: ia.min(ib),
            b: ia.max(ib),
            height: h,
            weight: wt,
            size: sz,
        });
        parent[rb] = ra;
        node[ra] = m + i;
    }
    Ok(Dendrogram { leaves: m, merges })
}

impl Dendrogram {
    /// Flat labels (0..n_clusters, in order of first item) from cutting the tree into
    /// `n_clusters` clusters.
    pub fn cut(&self, n_clusters: usize) -> Result<Vec<u32>> {
        let m = self.leaves;
        if n_clusters == 0 || n_clusters > m {
            return Err(Error::config(
                "n_clusters",
                format!("must be between 1 and {m}"),
            ));
        }
        let mut parent: Vec<usize> = (0..2 * m).collect();
        fn find(p: &mut [usize], mut x: usize) -> usize {
            while p[x] != x {
                p[x] = p[p[x]];
                x = p[x];
            }
            x
        }
        for (i, mg) in self.merges.iter().take(m - n_clusters).enumerate() {
            let ra = find(&mut parent, mg.a);
            let rb = find(&mut parent, mg.b);
            parent[ra] = m + i;
            parent[rb] = m + i;
        }
        let mut ids = std::collections::HashMap::new();
        Ok((0..m)
            .map(|leaf| {
                let r = find(&mut parent, leaf);
                let next = ids.len() as u32;
                *ids.entry(r).or_insert(next)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference computed with SciPy 1.17.1:
    //   from scipy.cluster.hierarchy import linkage
    //   X = [[0,0],[0,1],[5,5],[5,6],[10,0],[10,1.5]]
    //   linkage(X, "ward")
    //   -> [[0, 1, 1.0, 2], [2, 3, 1.0, 2], [4, 5, 1.5, 2],
    //       [7, 8, 9.7532046016, 4], [6, 9, 12.9759392724, 6]]
    #[test]
    fn matches_scipy_linkage() {
        let x = [0., 0., 0., 1., 5., 5., 5., 6., 10., 0., 10., 1.5];
        let p = Points::new(&x, 2).unwrap();
        let t = ward(&p, &[1.0; 6]).unwrap();
        let got: Vec<(usize, usize, usize)> = t.merges.iter().map(|m| (m.a, m.b, m.size)).collect();
        assert_eq!(
            got,
            vec![(0, 1, 2), (2, 3, 2), (4, 5, 2), (7, 8, 4), (6, 9, 6)]
        );
        let h: Vec<f64> = t.merges.iter().map(|m| m.height).collect();
        for (a, b) in h.iter().zip([1.0, 1.0, 1.5, 9.7532046016, 12.9759392724]) {
            assert!((a - b).abs() < 1e-9, "{h:?}");
        }
        assert_eq!(t.cut(3).unwrap(), vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(t.cut(1).unwrap(), vec![0; 6]);
        assert!(t.cut(7).is_err());
    }

    #[test]
    fn weights_act_like_repeated_points() {
        // a centroid of weight 2 merges like two coincident points
        let x = [0., 0., 3., 0., 10., 0.];
        let p = Points::new(&x, 2).unwrap();
        let t = ward(&p, &[2.0, 1.0, 1.0]).unwrap();
        // cost(0,1) = 2·1/3·9 = 6 → height sqrt(12)
        assert!((t.merges[0].height - 12f64.sqrt()).abs() < 1e-9);
        assert_eq!(t.merges[0].weight, 3.0);
    }
}
