//! The run's tensor files: `clusters/centroids.safetensors` (one `centroids` tensor, k × d f32).

use crate::error::{Error, Result};

/// Where the centroids live in a run.
pub const CENTROIDS: &str = "clusters/centroids.safetensors";

/// Cluster centres, row-major k × d.
#[derive(Clone, Debug, PartialEq)]
pub struct Centroids {
    /// Number of clusters.
    pub k: usize,
    /// Dimension.
    pub d: usize,
    /// k·d values.
    pub values: Vec<f32>,
}

impl Centroids {
    /// Encodes as safetensors.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let bad = |e: safetensors::SafeTensorError| Error::Format {
            location: CENTROIDS.into(),
            message: e.to_string(),
        };
        let bytes: Vec<u8> = self.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            vec![self.k, self.d],
            &bytes,
        )
        .map_err(bad)?;
        safetensors::serialize([("centroids", view)], None).map_err(bad)
    }

    /// Decodes safetensors read from `location`.
    pub fn from_safetensors(bytes: &[u8], location: &str) -> Result<Centroids> {
        let bad = |message: String| Error::Format {
            location: location.to_string(),
            message,
        };
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let t = st
            .tensor("centroids")
            .map_err(|e| bad(format!("tensor \"centroids\": {e}")))?;
        if t.dtype() != safetensors::Dtype::F32 || t.shape().len() != 2 {
            return Err(bad(format!(
                "tensor \"centroids\" is {:?} {:?}, expected F32 [k, d]",
                t.dtype(),
                t.shape()
            )));
        }
        let (k, d) = (t.shape()[0], t.shape()[1]);
        let values: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if k == 0 || d == 0 || values.iter().any(|v| !v.is_finite()) {
            return Err(bad(format!("{k} × {d} centroids, or a non-finite value")));
        }
        Ok(Centroids { k, d, values })
    }
}
