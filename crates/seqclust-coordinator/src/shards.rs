//! Shard assignment: every dataset shard to exactly one member, spread evenly, in a way
//! that depends only on the membership (so a restarted coordinator computes the same map).

use std::collections::BTreeMap;

/// `members` (in rank order) → the shards each holds: shard `s` goes to member `s mod W`.
/// Every shard is assigned exactly once; loads differ by at most one shard.
pub fn assign_shards(num_shards: usize, members: &[String]) -> BTreeMap<String, Vec<u32>> {
    let mut out: BTreeMap<String, Vec<u32>> =
        members.iter().map(|m| (m.clone(), Vec::new())).collect();
    if members.is_empty() {
        return out;
    }
    for s in 0..num_shards {
        let m = &members[s % members.len()];
        if let Some(v) = out.get_mut(m) {
            v.push(s as u32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn every_shard_exactly_once_and_balanced(shards in 0usize..300, world in 1usize..20) {
            let members: Vec<String> = (0..world).map(|i| format!("w{i:03}")).collect();
            let map = assign_shards(shards, &members);
            let mut seen = vec![0u32; shards];
            for v in map.values() {
                for &s in v {
                    seen[s as usize] += 1;
                }
            }
            prop_assert!(seen.iter().all(|&c| c == 1));
            let loads: Vec<usize> = map.values().map(Vec::len).collect();
            let (lo, hi) = (loads.iter().min().copied().unwrap_or(0), loads.iter().max().copied().unwrap_or(0));
            prop_assert!(hi - lo <= 1);
        }
    }
}
