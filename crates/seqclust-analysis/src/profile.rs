//! Per-cluster profiles: size, items and categories by lift over the population, action mix,
//! session shape, time of day, medoid users and the action/category motifs that distinguish
//! each cluster.

use rustc_hash::FxHashMap;
use serde::Serialize;

use seqclust_data::dataset::SeqRef;

use crate::config::AnalysisConfig;

/// One user as the analysis sees it.
#[derive(Debug, Clone, Copy)]
pub struct UserView<'a> {
    /// The user's events.
    pub seq: SeqRef<'a>,
    /// Its cluster.
    pub cluster: u32,
    /// Its distance to the centroid.
    pub distance: f32,
}

/// Names for ids, to make the profiles readable.
#[derive(Clone, Copy)]
pub struct Names<'a> {
    /// Action names by id.
    pub actions: &'a [String],
    /// Item key by id.
    pub item: &'a dyn Fn(u32) -> String,
    /// Category key by id.
    pub category: &'a dyn Fn(u32) -> String,
    /// Whether timestamps are milliseconds since the epoch (time of day is meaningful).
    pub absolute_time: bool,
}

/// Something over-represented in a cluster.
#[derive(Debug, Clone, Serialize)]
pub struct Lifted {
    /// The item, category, action or motif.
    pub key: String,
    /// Share of the cluster's users with it.
    pub share: f64,
    /// Share in the cluster over share in the population.
    pub lift: f64,
    /// Users of the cluster with it.
    pub users: u64,
}

/// A motif: an n-gram of consecutive actions or categories.
#[derive(Debug, Clone, Serialize)]
pub struct Motif {
    /// `actions` or `categories`.
    pub over: &'static str,
    /// The n-gram, e.g. `view → cart → buy`.
    #[serde(flatten)]
    pub lifted: Lifted,
}

/// Quantiles of a per-user number.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// 90th percentile.
    pub p90: f64,
}

/// The profile of one cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterProfile {
    /// The cluster id.
    pub cluster: u32,
    /// Users.
    pub size: u64,
    /// Share of all users.
    pub share: f64,
    /// Items by lift.
    pub top_items: Vec<Lifted>,
    /// Categories by lift.
    pub top_categories: Vec<Lifted>,
    /// Share of events per action, with lift over the population's mix.
    pub actions: Vec<Lifted>,
    /// Events per user.
    pub events_per_user: Spread,
    /// Sessions per user.
    pub sessions_per_user: Spread,
    /// Mean events per session, per user.
    pub session_length: Spread,
    /// Share of events per hour of day (UTC), when times are absolute.
    pub hours: Option<Vec<f64>>,
    /// The busiest hour (UTC), when times are absolute.
    pub peak_hour: Option<u32>,
    /// The users nearest the centroid (pseudonymised when configured).
    pub medoids: Vec<String>,
    /// Motifs by lift.
    pub motifs: Vec<Motif>,
    /// Surrogate-tree rules that lead to this cluster (filled by the tree).
    pub rules: Vec<crate::tree::Rule>,
}

fn spread(mut v: Vec<f64>) -> Spread {
    if v.is_empty() {
        return Spread::default();
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    Spread {
        median: q(0.5),
        p90: q(0.9),
    }
}

/// Counts of keys over users (each user counted once per key), per cluster and overall.
struct Presence<K> {
    per_cluster: Vec<FxHashMap<K, u64>>,
    total: FxHashMap<K, u64>,
}

impl<K: std::hash::Hash + Eq + Clone + Ord> Presence<K> {
    fn new(k: usize) -> Self {
        Presence {
            per_cluster: (0..k).map(|_| FxHashMap::default()).collect(),
            total: FxHashMap::default(),
        }
    }

    fn add_user(&mut self, cluster: usize, mut keys: Vec<K>) {
        keys.sort();
        keys.dedup();
        for key in keys {
            *self.per_cluster[cluster].entry(key.clone()).or_default() += 1;
            *self.total.entry(key).or_default() += 1;
        }
    }

    fn top(
        &self,
        cluster: usize,
        size: u64,
        n_users: u64,
        cfg: &AnalysisConfig,
        n: usize,
        name: impl Fn(&K) -> String,
    ) -> Vec<Lifted> {
        let mut out: Vec<(f64, u64, &K)> = self.per_cluster[cluster]
            .iter()
            .filter(|&(_, &c)| c >= cfg.min_support && c as f64 >= cfg.min_share * size as f64)
            .map(|(key, &c)| {
                let share = c as f64 / size.max(1) as f64;
                let base = self.total[key] as f64 / n_users.max(1) as f64;
                (share / base, c, key)
            })
            .collect();
        out.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(b.2)));
        out.truncate(n);
        out.into_iter()
            .map(|(lift, c, key)| Lifted {
                key: name(key),
                share: c as f64 / size.max(1) as f64,
                lift,
                users: c,
            })
            .collect()
    }
}

fn ngrams<T: Copy>(xs: &[T], n: usize) -> Vec<Vec<T>> {
    if n == 0 || xs.len() < n {
        return Vec::new();
    }
    xs.windows(n).map(<[T]>::to_vec).collect()
}

/// Profiles every cluster. `pseudonym` maps a user id to what is published.
pub fn profiles(
    users: &[UserView<'_>],
    k: usize,
    names: Names<'_>,
    cfg: &AnalysisConfig,
    pseudonym: &dyn Fn(&str) -> String,
) -> Vec<ClusterProfile> {
    let n_users = users.len() as u64;
    let mut sizes = vec![0u64; k];
    let mut items = Presence::<u32>::new(k);
    let mut cats = Presence::<u32>::new(k);
    let mut action_motifs = Presence::<Vec<u16>>::new(k);
    let mut cat_motifs = Presence::<Vec<u32>>::new(k);
    let n_actions = names.actions.len().max(1);
    let mut action_events = vec![vec![0u64; n_actions]; k];
    let mut action_total = vec![0u64; n_actions];
    let mut hours = vec![[0u64; 24]; k];
    let mut events = vec![Vec::new(); k];
    let mut sessions = vec![Vec::new(); k];
    let mut session_len = vec![Vec::new(); k];
    let mut nearest: Vec<Vec<(f32, &str)>> = vec![Vec::new(); k];
    for u in users {
        let c = u.cluster as usize;
        if c >= k {
            continue;
        }
        sizes[c] += 1;
        let s = &u.seq;
        items.add_user(c, s.items.to_vec());
        cats.add_user(c, s.categories.to_vec());
        let mut am = Vec::new();
        let mut cm = Vec::new();
        for &n in &cfg.motif_lengths {
            am.extend(ngrams(s.actions, n));
            cm.extend(ngrams(s.categories, n));
        }
        action_motifs.add_user(c, am);
        cat_motifs.add_user(c, cm);
        for &a in s.actions {
            let a = (a as usize).min(n_actions - 1);
            action_events[c][a] += 1;
            action_total[a] += 1;
        }
        if names.absolute_time {
            for &t in s.timestamps {
                hours[c][(t.div_euclid(3_600_000).rem_euclid(24)) as usize] += 1;
            }
        }
        let mut ids: Vec<u32> = s.sessions.to_vec();
        ids.dedup();
        let n_sessions = ids.len().max(1);
        events[c].push(s.items.len() as f64);
        sessions[c].push(n_sessions as f64);
        session_len[c].push(s.items.len() as f64 / n_sessions as f64);
        nearest[c].push((u.distance, s.user));
    }
    let total_events: u64 = action_total.iter().sum();
    (0..k)
        .map(|c| {
            let size = sizes[c];
            let cluster_events: u64 = action_events[c].iter().sum();
            let actions = (1..n_actions)
                .filter(|&a| action_events[c][a] > 0)
                .map(|a| {
                    let share = action_events[c][a] as f64 / cluster_events.max(1) as f64;
                    let base = action_total[a] as f64 / total_events.max(1) as f64;
                    Lifted {
                        key: names.actions[a].clone(),
                        share,
                        lift: share / base.max(f64::MIN_POSITIVE),
                        users: 0,
                    }
                })
                .collect();
            let hour_counts = hours[c];
            let hour_total: u64 = hour_counts.iter().sum();
            let (hours, peak_hour) = if names.absolute_time && hour_total > 0 {
                let peak = (0..24u32)
                    .max_by_key(|&h| (hour_counts[h as usize], std::cmp::Reverse(h)))
                    .unwrap_or(0);
                (
                    Some(
                        hour_counts
                            .iter()
                            .map(|&h| h as f64 / hour_total as f64)
                            .collect(),
                    ),
                    Some(peak),
                )
            } else {
                (None, None)
            };
            let mut near = std::mem::take(&mut nearest[c]);
            near.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
            let action_name = |a: u16| {
                names
                    .actions
                    .get(a as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("action {a}"))
            };
            let mut motifs: Vec<Motif> = action_motifs
                .top(c, size, n_users, cfg, cfg.top_motifs, |g| {
                    g.iter()
                        .map(|&a| action_name(a))
                        .collect::<Vec<_>>()
                        .join(" → ")
                })
                .into_iter()
                .map(|lifted| Motif {
                    over: "actions",
                    lifted,
                })
                .chain(
                    cat_motifs
                        .top(c, size, n_users, cfg, cfg.top_motifs, |g| {
                            g.iter()
                                .map(|&x| (names.category)(x))
                                .collect::<Vec<_>>()
                                .join(" → ")
                        })
                        .into_iter()
                        .map(|lifted| Motif {
                            over: "categories",
                            lifted,
                        }),
                )
                .collect();
            motifs.sort_by(|a, b| b.lifted.lift.total_cmp(&a.lifted.lift));
            ClusterProfile {
                cluster: c as u32,
                size,
                share: size as f64 / n_users.max(1) as f64,
                top_items: items.top(c, size, n_users, cfg, cfg.top_items, |&i| (names.item)(i)),
                top_categories: cats.top(c, size, n_users, cfg, cfg.top_items, |&i| {
                    (names.category)(i)
                }),
                actions,
                events_per_user: spread(std::mem::take(&mut events[c])),
                sessions_per_user: spread(std::mem::take(&mut sessions[c])),
                session_length: spread(std::mem::take(&mut session_len[c])),
                hours,
                peak_hour,
                medoids: near
                    .iter()
                    .take(cfg.medoids)
                    .map(|(_, u)| pseudonym(u))
                    .collect(),
                motifs,
                rules: Vec::new(),
            }
        })
        .collect()
}
