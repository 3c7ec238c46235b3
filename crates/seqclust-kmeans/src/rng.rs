//! Deterministic randomness: ChaCha8 streams, and counter-based uniforms for per-point
//! decisions made in parallel (so the outcome does not depend on the thread count).

use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

/// SplitMix64 finaliser.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A ChaCha8 stream for `(seed, stream)`.
pub fn stream(seed: u64, stream: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(seed ^ mix(stream.wrapping_add(0x5eed))))
}

/// A uniform in [0, 1) determined by `(seed, a, b)`.
pub fn uniform(seed: u64, a: u64, b: u64) -> f64 {
    (mix(seed ^ mix(a ^ mix(b))) >> 11) as f64 / (1u64 << 53) as f64
}
