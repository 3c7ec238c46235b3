//! Shard assignment: every dataset shard to exactly one member, spread evenly, in a way
//! that depends only on the membership (so a restarted coordinator computes the same map),
//! and that moves few shards when the membership changes (each moved shard is embedded
//! again by its new holder).

use std::collections::BTreeMap;

/// `members` → the shards each holds. Every shard is assigned exactly once and loads differ
/// by at most one shard. Rendezvous hashing with bounded loads: shard `s` goes to the member
/// that ranks highest for it (a stable hash of member and shard) among those with room, so
/// a member joining or leaving moves about its own share of the shards rather than
/// reshuffling all of them.
pub fn assign_shards(num_shards: usize, members: &[String]) -> BTreeMap<String, Vec<u32>> {
    let mut out: BTreeMap<String, Vec<u32>> =
        members.iter().map(|m| (m.clone(), Vec::new())).collect();
    if members.is_empty() {
        return out;
    }
    let (floor, extra) = (num_shards / members.len(), num_shards % members.len());
    let mut at_ceiling = 0;
    for s in 0..num_shards {
        let mut ranked: Vec<(u64, &String)> = members.iter().map(|m| (rank(m, s), m)).collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        // room: below the floor, or at it while fewer than `extra` members hold one more
        let chosen = ranked.into_iter().map(|(_, m)| m).find(|m| {
            let load = out.get(*m).map_or(0, Vec::len);
            load < floor || (load == floor && at_ceiling < extra)
        });
        if let Some(m) = chosen
            && let Some(v) = out.get_mut(m)
        {
            if v.len() == floor {
                at_ceiling += 1;
            }
            v.push(s as u32);
        }
    }
    out
}

/// The rendezvous weight of member `m` for shard `s`.
fn rank(m: &str, s: usize) -> u64 {
    let mut key = m.as_bytes().to_vec();
    key.extend_from_slice(&(s as u64).to_le_bytes());
    seqclust_data::ingest::partition_of(&key, usize::MAX) as u64
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

        #[test]
        fn a_member_joining_or_leaving_moves_few_shards(shards in 16usize..200, world in 1usize..12) {
            let before: Vec<String> = (0..world).map(|i| format!("w{i:03}")).collect();
            let mut after = before.clone();
            after.push("joined".into());
            let (a, b) = (assign_shards(shards, &before), assign_shards(shards, &after));
            let holder = |m: &BTreeMap<String, Vec<u32>>| {
                let mut h = vec![String::new(); shards];
                for (w, v) in m { for &s in v { h[s as usize] = w.clone(); } }
                h
            };
            let moved = holder(&a).iter().zip(holder(&b)).filter(|(x, y)| *x != y).count();
            // s mod W would move about (1 - 1/(W+1)) of them; this moves about the
            // newcomer's share, plus what the load bounds shift
            prop_assert!(moved <= 2 * shards.div_ceil(world + 1) + world, "{moved} of {shards} moved");
        }
    }
}
