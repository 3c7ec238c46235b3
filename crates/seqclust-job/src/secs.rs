//! Durations as (fractional) seconds in config files: `#[serde(with = "seqclust_job::secs")]`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Writes the duration as seconds.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Reads seconds (a fraction allowed); negative or non-finite values are refused.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = f64::deserialize(d)?;
    Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
}
