//! Agreement between two labelings: adjusted Rand index, normalised mutual information,
//! purity. Labels are any integers; they need not be contiguous.

use std::collections::HashMap;

/// The contingency table of two labelings.
struct Contingency {
    n: f64,
    cells: HashMap<(u64, u64), f64>,
    rows: HashMap<u64, f64>,
    cols: HashMap<u64, f64>,
}

fn contingency(a: &[u64], b: &[u64]) -> Contingency {
    assert_eq!(a.len(), b.len(), "labelings of different lengths");
    let mut cells = HashMap::new();
    let mut rows = HashMap::new();
    let mut cols = HashMap::new();
    for (&x, &y) in a.iter().zip(b) {
        *cells.entry((x, y)).or_insert(0.0) += 1.0;
        *rows.entry(x).or_insert(0.0) += 1.0;
        *cols.entry(y).or_insert(0.0) += 1.0;
    }
    Contingency {
        n: a.len() as f64,
        cells,
        rows,
        cols,
    }
}

fn comb2(x: f64) -> f64 {
    x * (x - 1.0) / 2.0
}

/// Adjusted Rand index (Hubert & Arabie 1985), as scikit-learn computes it: 1 for identical
/// partitions, about 0 for independent ones.
pub fn adjusted_rand_index(a: &[u64], b: &[u64]) -> f64 {
    let c = contingency(a, b);
    if c.n < 2.0 {
        return 1.0;
    }
    let sum_cells: f64 = c.cells.values().map(|&v| comb2(v)).sum();
    let sum_rows: f64 = c.rows.values().map(|&v| comb2(v)).sum();
    let sum_cols: f64 = c.cols.values().map(|&v| comb2(v)).sum();
    let expected = sum_rows * sum_cols / comb2(c.n);
    let max = 0.5 * (sum_rows + sum_cols);
    if max == expected {
        return 1.0;
    }
    (sum_cells - expected) / (max - expected)
}

fn entropy(counts: impl Iterator<Item = f64>, n: f64) -> f64 {
    counts
        .filter(|&v| v > 0.0)
        .map(|v| -(v / n) * (v / n).ln())
        .sum()
}

/// Normalised mutual information with the arithmetic mean of the entropies (scikit-learn's
/// default): 1 for identical partitions.
pub fn normalized_mutual_info(a: &[u64], b: &[u64]) -> f64 {
    let c = contingency(a, b);
    let n = c.n;
    if n == 0.0 {
        return 1.0;
    }
    let ha = entropy(c.rows.values().copied(), n);
    let hb = entropy(c.cols.values().copied(), n);
    if ha == 0.0 && hb == 0.0 {
        return 1.0;
    }
    let mi: f64 = c
        .cells
        .iter()
        .map(|(&(x, y), &v)| (v / n) * ((v * n) / (c.rows[&x] * c.cols[&y])).ln())
        .sum();
    let denom = 0.5 * (ha + hb);
    if denom <= 0.0 {
        0.0
    } else {
        (mi / denom).clamp(0.0, 1.0)
    }
}

/// Purity of `clusters` against `truth`: the share of points in their cluster's majority class.
pub fn purity(clusters: &[u64], truth: &[u64]) -> f64 {
    let c = contingency(clusters, truth);
    if c.n == 0.0 {
        return 1.0;
    }
    let mut best: HashMap<u64, f64> = HashMap::new();
    for (&(x, _), &v) in &c.cells {
        let e = best.entry(x).or_insert(0.0);
        *e = e.max(v);
    }
    best.values().sum::<f64>() / c.n
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values computed with scikit-learn 1.9.1:
    //   from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    //   a = [0, 0, 1, 1, 2, 2, 2, 0]; b = [1, 1, 0, 0, 0, 2, 2, 1]
    //   adjusted_rand_score(a, b)          -> 0.6190476190476191
    //   normalized_mutual_info_score(a, b) -> 0.7794365191085162
    #[test]
    fn golden_values() {
        let a = [0, 0, 1, 1, 2, 2, 2, 0];
        let b = [1, 1, 0, 0, 0, 2, 2, 1];
        assert!((adjusted_rand_index(&a, &b) - 0.6190476190476191).abs() < 1e-12);
        assert!((normalized_mutual_info(&a, &b) - 0.7794365191085162).abs() < 1e-12);
        assert!((purity(&a, &b) - 7.0 / 8.0).abs() < 1e-12);
    }

    #[test]
    fn permutation_invariant_and_bounded() {
        let a = [0, 0, 1, 1, 2, 2];
        let b = [5, 5, 9, 9, 7, 7];
        assert_eq!(adjusted_rand_index(&a, &b), 1.0);
        assert!((normalized_mutual_info(&a, &b) - 1.0).abs() < 1e-12);
        assert_eq!(purity(&a, &b), 1.0);
        let single = [0, 0, 0, 0];
        assert_eq!(normalized_mutual_info(&single, &single), 1.0);
    }
}
