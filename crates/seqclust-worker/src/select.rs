//! Which users a mini-batch or a sample takes: a counter-based hash of (seed, round, shard,
//! position), so the selection depends on the data alone — not on which worker holds a
//! shard — and 1 or N workers draw the same users.

/// A uniform number in [0, 1) for user `pos` of `shard` in round `round`.
pub fn unit(seed: u64, round: u64, shard: u32, pos: u32) -> f64 {
    let mut x = seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= (u64::from(shard) << 32 | u64::from(pos)).wrapping_mul(0xD1B5_4A32_D192_ED03);
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_rate_is_close_to_the_fraction() {
        let n = 100_000u32;
        let hits = (0..n).filter(|&i| unit(42, 3, i % 7, i) < 0.1).count();
        assert!((hits as f64 / n as f64 - 0.1).abs() < 0.005, "{hits}");
        assert_ne!(unit(42, 3, 0, 1), unit(42, 4, 0, 1));
    }
}
