//! Row-major f32 matrices: the points to cluster and the centroids.

use crate::error::{Error, Result};

/// A borrowed row-major `n × d` matrix of finite f32 values.
#[derive(Debug, Clone, Copy)]
pub struct Points<'a> {
    data: &'a [f32],
    n: usize,
    d: usize,
}

impl<'a> Points<'a> {
    /// Wraps `data` as rows of dimension `d`, checking the shape and that every value is finite
    /// (the error names the first bad row and column).
    pub fn new(data: &'a [f32], d: usize) -> Result<Self> {
        if d == 0 || !data.len().is_multiple_of(d) {
            return Err(Error::Shape { len: data.len(), d });
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                row: i / d,
                col: i % d,
                value: data[i],
            });
        }
        Ok(Points {
            data,
            n: data.len() / d,
            d,
        })
    }

    /// Number of rows.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Row dimension.
    pub fn d(&self) -> usize {
        self.d
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.d..(i + 1) * self.d]
    }

    /// Rows `a..b` as one slice.
    pub fn rows(&self, a: usize, b: usize) -> &'a [f32] {
        &self.data[a * self.d..b * self.d]
    }

    /// All values.
    pub fn as_slice(&self) -> &'a [f32] {
        self.data
    }
}

/// An owned row-major `k × d` matrix of centroids.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Centroids {
    data: Vec<f32>,
    k: usize,
    d: usize,
}

impl Centroids {
    /// Takes `data` as `k` rows of dimension `d`.
    pub fn new(data: Vec<f32>, d: usize) -> Result<Self> {
        Points::new(&data, d)?;
        let k = data.len() / d;
        Ok(Centroids { data, k, d })
    }

    /// Copies the given rows of `points`.
    pub fn from_rows(points: &Points<'_>, rows: &[usize]) -> Self {
        let mut data = Vec::with_capacity(rows.len() * points.d());
        for &r in rows {
            data.extend_from_slice(points.row(r));
        }
        Centroids {
            data,
            k: rows.len(),
            d: points.d(),
        }
    }

    /// Number of centroids.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Dimension.
    pub fn d(&self) -> usize {
        self.d
    }

    /// Centroid `c`.
    pub fn row(&self, c: usize) -> &[f32] {
        &self.data[c * self.d..(c + 1) * self.d]
    }

    /// Centroid `c`, mutable.
    pub fn row_mut(&mut self, c: usize) -> &mut [f32] {
        &mut self.data[c * self.d..(c + 1) * self.d]
    }

    /// All values, row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// Consumes into the row-major values.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// A view as points.
    pub fn as_points(&self) -> Points<'_> {
        Points {
            data: &self.data,
            n: self.k,
            d: self.d,
        }
    }

    /// Scales every row to unit length (rows of zeros are left as they are).
    pub fn normalize_rows(&mut self) {
        for c in 0..self.k {
            let r = self.row_mut(c);
            let norm = r.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 {
                r.iter_mut().for_each(|v| *v /= norm);
            }
        }
    }
}

/// Squared Euclidean distance.
pub fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Dot product.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_finiteness_are_checked() {
        assert!(matches!(
            Points::new(&[1.0, 2.0, 3.0], 2),
            Err(Error::Shape { len: 3, d: 2 })
        ));
        assert!(matches!(Points::new(&[1.0], 0), Err(Error::Shape { .. })));
        let e = Points::new(&[1.0, 2.0, 3.0, f32::NAN], 2).unwrap_err();
        assert!(matches!(e, Error::NonFinite { row: 1, col: 1, .. }));
        assert!(e.to_string().contains("row 1"));
        let p = Points::new(&[1.0, 2.0, 3.0, 4.0], 2).unwrap();
        assert_eq!((p.n(), p.row(1)), (2, &[3.0, 4.0][..]));
    }
}
