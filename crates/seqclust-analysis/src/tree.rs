//! The surrogate decision tree: a shallow CART (linfa-trees) fitted on interpretable user
//! features to predict the cluster the encoder put each user in. Its rules say *why* a user
//! falls in a cluster; its fidelity — agreement with the real assignment on users it was not
//! fitted on — says how far to trust them.

use linfa::prelude::*;
use linfa_trees::{DecisionTree, TreeNode};
use ndarray::{Array1, Array2};
use serde::Serialize;

use crate::config::AnalysisConfig;
use crate::error::{Error, Result};
use crate::profile::{Names, UserView};

/// The interpretable features of users.
pub struct Features {
    /// Feature names.
    pub names: Vec<String>,
    /// Row-major users × features.
    pub values: Vec<f64>,
}

/// Builds the features: activity, session shape, repetition, action mix, the most frequent
/// categories' shares, how often and along which of the most frequent category pairs the user
/// moves between categories, time of day and pace (with absolute times), dwell (when
/// present).
pub fn features(users: &[UserView<'_>], names: Names<'_>, cfg: &AnalysisConfig) -> Features {
    let n_actions = names.actions.len().max(1);
    let mut cat_counts = rustc_hash::FxHashMap::<u32, u64>::default();
    for u in users {
        for &c in u.seq.categories {
            *cat_counts.entry(c).or_default() += 1;
        }
    }
    let mut top: Vec<(u32, u64)> = cat_counts.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(cfg.tree_categories);
    let cat_index: rustc_hash::FxHashMap<u32, usize> =
        top.iter().enumerate().map(|(i, &(c, _))| (c, i)).collect();
    let mut move_counts = rustc_hash::FxHashMap::<(u32, u32), u64>::default();
    for u in users {
        for w in u.seq.categories.windows(2) {
            if w[0] != w[1] {
                *move_counts.entry((w[0], w[1])).or_default() += 1;
            }
        }
    }
    let mut moves: Vec<((u32, u32), u64)> = move_counts.into_iter().collect();
    moves.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    moves.truncate(cfg.tree_transitions);
    let move_index: rustc_hash::FxHashMap<(u32, u32), usize> = moves
        .iter()
        .enumerate()
        .map(|(i, &(m, _))| (m, i))
        .collect();
    let has_dwell = users.iter().any(|u| u.seq.dwell.is_some());

    let mut fnames: Vec<String> = vec![
        "events".into(),
        "sessions".into(),
        "events per session".into(),
        "share of repeated items".into(),
    ];
    for a in names.actions.iter().skip(1) {
        fnames.push(format!("share of {a}"));
    }
    for &(c, _) in &top {
        fnames.push(format!("share in category {}", (names.category)(c)));
    }
    fnames.push("share of moves to another category".into());
    for &((a, b), _) in &moves {
        fnames.push(format!(
            "share of moves {} → {}",
            (names.category)(a),
            (names.category)(b)
        ));
    }
    if names.absolute_time {
        for block in [
            "night (0-6h)",
            "morning (6-12h)",
            "afternoon (12-18h)",
            "evening (18-24h)",
        ] {
            fnames.push(format!("share at {block}"));
        }
        fnames.push("median gap (log10 s)".into());
    }
    if has_dwell {
        fnames.push("mean dwell (s)".into());
    }
    let width = fnames.len();
    let mut values = Vec::with_capacity(users.len() * width);
    for u in users {
        let s = &u.seq;
        let n = s.items.len().max(1) as f64;
        let mut sess: Vec<u32> = s.sessions.to_vec();
        sess.dedup();
        let mut distinct: Vec<u32> = s.items.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        values.push(s.items.len() as f64);
        values.push(sess.len() as f64);
        values.push(n / sess.len().max(1) as f64);
        values.push(1.0 - distinct.len() as f64 / n);
        let mut acts = vec![0f64; n_actions];
        for &a in s.actions {
            acts[(a as usize).min(n_actions - 1)] += 1.0;
        }
        values.extend(acts.iter().skip(1).map(|c| c / n));
        let mut cats = vec![0f64; top.len()];
        for c in s.categories {
            if let Some(&i) = cat_index.get(c) {
                cats[i] += 1.0;
            }
        }
        values.extend(cats.iter().map(|c| c / n));
        let steps = s.categories.len().saturating_sub(1).max(1) as f64;
        let mut switched = 0f64;
        let mut mv = vec![0f64; moves.len()];
        for w in s.categories.windows(2) {
            if w[0] != w[1] {
                switched += 1.0;
                if let Some(&i) = move_index.get(&(w[0], w[1])) {
                    mv[i] += 1.0;
                }
            }
        }
        values.push(switched / steps);
        values.extend(mv.iter().map(|c| c / steps));
        if names.absolute_time {
            let mut blocks = [0f64; 4];
            for &t in s.timestamps {
                blocks[(t.div_euclid(3_600_000).rem_euclid(24) / 6) as usize] += 1.0;
            }
            values.extend(blocks.iter().map(|c| c / n));
            let mut gaps: Vec<i64> = s.timestamps.windows(2).map(|w| w[1] - w[0]).collect();
            gaps.sort_unstable();
            let median = gaps.get(gaps.len() / 2).copied().unwrap_or(0);
            values.push(((median.max(0) as f64) / 1000.0 + 1.0).log10());
        }
        if has_dwell {
            let d = s.dwell.unwrap_or(&[]);
            values.push(d.iter().map(|&x| f64::from(x)).sum::<f64>() / d.len().max(1) as f64);
        }
    }
    Features {
        names: fnames,
        values,
    }
}

/// One condition on a path of the tree.
#[derive(Debug, Clone, Serialize)]
pub struct Condition {
    /// The feature's name.
    pub feature: String,
    /// `<` or `≥`.
    pub op: &'static str,
    /// The threshold.
    pub threshold: f64,
}

/// A path from the root to a leaf that predicts a cluster.
#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    /// The conditions, root first.
    pub conditions: Vec<Condition>,
    /// Held-out users that reach the leaf.
    pub users: u64,
    /// Share of them the encoder put in the predicted cluster.
    pub precision: f64,
    /// The rule as one line of text.
    pub text: String,
}

/// The fitted surrogate and how well it matches the assignment.
#[derive(Debug, Clone, Serialize)]
pub struct Surrogate {
    /// The tree's depth limit.
    pub max_depth: usize,
    /// Leaves.
    pub leaves: usize,
    /// Users fitted on.
    pub fitted_users: usize,
    /// Users held out.
    pub held_out_users: usize,
    /// Agreement with the real assignment on held-out users.
    pub fidelity: f64,
    /// Agreement on the users it was fitted on.
    pub train_fidelity: f64,
    /// Features, with their importance (impurity decrease, normalised).
    pub features: Vec<(String, f64)>,
    /// Rules per cluster, most-used first (at most 3 each).
    #[serde(skip)]
    pub rules: Vec<Vec<Rule>>,
}

/// Whether user `i` of a deterministic order is held out (every fifth).
fn held_out(i: usize) -> bool {
    i % 5 == 4
}

/// Fits the surrogate on (at most `cfg.tree_users` of) `users` and reports its fidelity.
pub fn fit(
    users: &[UserView<'_>],
    k: usize,
    f: &Features,
    cfg: &AnalysisConfig,
) -> Result<Surrogate> {
    let width = f.names.len();
    let n = users.len();
    if n < 10 || k < 2 {
        return Err(Error::Input(format!(
            "a surrogate tree needs at least 10 users and 2 clusters ({n} users, k = {k})"
        )));
    }
    // a deterministic spread-out sample: every step-th user
    let want = (cfg.tree_users + cfg.tree_users / 4).min(n);
    let step = n as f64 / want as f64;
    let picked: Vec<usize> = (0..want)
        .map(|i| ((i as f64 * step) as usize).min(n - 1))
        .collect();
    type Rows = Vec<(usize, usize)>;
    let (fit_rows, test_rows): (Rows, Rows) = picked
        .iter()
        .copied()
        .enumerate()
        .partition(|&(i, _)| !held_out(i));
    let matrix = |rows: &[(usize, usize)]| {
        let mut m = Vec::with_capacity(rows.len() * width);
        for &(_, r) in rows {
            m.extend_from_slice(&f.values[r * width..(r + 1) * width]);
        }
        Array2::from_shape_vec((rows.len(), width), m)
    };
    let enc = |e: ndarray::ShapeError| Error::Input(e.to_string());
    let x_fit = matrix(&fit_rows).map_err(enc)?;
    let y_fit: Array1<usize> = fit_rows
        .iter()
        .map(|&(_, r)| users[r].cluster as usize)
        .collect();
    let x_test = matrix(&test_rows).map_err(enc)?;
    let y_test: Vec<usize> = test_rows
        .iter()
        .map(|&(_, r)| users[r].cluster as usize)
        .collect();
    let ds = Dataset::new(x_fit.clone(), y_fit.clone()).with_feature_names(f.names.clone());
    let min_leaf = (fit_rows.len() as f32 / 2000.0).max(2.0);
    let tree = DecisionTree::params()
        .max_depth(Some(cfg.tree_depth))
        .min_weight_split(2.0 * min_leaf)
        .min_weight_leaf(min_leaf)
        .fit(&ds)
        .map_err(|e| Error::Input(format!("fitting the surrogate tree: {e}")))?;
    let agree = |x: &Array2<f64>, y: &[usize]| {
        let p: Array1<usize> = tree.predict(x);
        p.iter().zip(y).filter(|(a, b)| a == b).count() as f64 / y.len().max(1) as f64
    };
    let fidelity = agree(&x_test, &y_test);
    let train_fidelity = agree(&x_fit, y_fit.as_slice().unwrap_or(&[]));

    // route the held-out users to leaves to count and score each rule
    let mut leaves: Vec<(Vec<Condition>, usize, Vec<bool>)> = Vec::new();
    collect_leaves(tree.root_node(), &f.names, &mut Vec::new(), &mut leaves);
    let mut reach = vec![(0u64, 0u64); leaves.len()];
    for (row, &y) in x_test.rows().into_iter().zip(&y_test) {
        let path = route(tree.root_node(), row.as_slice().unwrap_or(&[]));
        if let Some(i) = leaves.iter().position(|l| l.2 == path) {
            reach[i].0 += 1;
            reach[i].1 += u64::from(leaves[i].1 == y);
        }
    }
    let mut rules: Vec<Vec<Rule>> = vec![Vec::new(); k];
    for (i, (conds, class, _)) in leaves.iter().enumerate() {
        if *class >= k || reach[i].0 == 0 {
            continue;
        }
        let text = if conds.is_empty() {
            "every user".to_string()
        } else {
            conds
                .iter()
                .map(|c| format!("{} {} {:.3}", c.feature, c.op, c.threshold))
                .collect::<Vec<_>>()
                .join(" and ")
        };
        rules[*class].push(Rule {
            conditions: conds.clone(),
            users: reach[i].0,
            precision: reach[i].1 as f64 / reach[i].0 as f64,
            text,
        });
    }
    for r in &mut rules {
        r.sort_by_key(|x| std::cmp::Reverse(x.users));
        r.truncate(3);
    }
    let importance = tree.feature_importance();
    let mut features: Vec<(String, f64)> = f
        .names
        .iter()
        .cloned()
        .zip(importance.iter().copied())
        .filter(|(_, v)| *v > 0.0)
        .collect();
    features.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(Surrogate {
        max_depth: cfg.tree_depth,
        leaves: tree.num_leaves(),
        fitted_users: fit_rows.len(),
        held_out_users: test_rows.len(),
        fidelity,
        train_fidelity,
        features,
        rules,
    })
}

/// Every leaf: its conditions, its class and its path (false = left).
fn collect_leaves(
    node: &TreeNode<f64, usize>,
    names: &[String],
    path: &mut Vec<bool>,
    out: &mut Vec<(Vec<Condition>, usize, Vec<bool>)>,
) {
    if let Some(class) = node.prediction() {
        out.push((Vec::new(), class, path.clone()));
        return;
    }
    let (f, t, _) = node.split();
    let kids = node.children();
    for (right, kid) in [(false, kids[0]), (true, kids[1])] {
        if let Some(kid) = kid {
            let start = out.len();
            path.push(right);
            collect_leaves(kid, names, path, out);
            path.pop();
            for leaf in &mut out[start..] {
                leaf.0.insert(
                    0,
                    Condition {
                        feature: names
                            .get(f)
                            .cloned()
                            .unwrap_or_else(|| format!("feature {f}")),
                        op: if right { "≥" } else { "<" },
                        threshold: t,
                    },
                );
            }
        }
    }
}

/// The path a row takes (linfa-trees predicts with `x[f] < threshold` → left).
fn route(root: &TreeNode<f64, usize>, row: &[f64]) -> Vec<bool> {
    let mut node = root;
    let mut path = Vec::new();
    while node.prediction().is_none() {
        let (f, t, _) = node.split();
        // the same test as linfa-trees' predict (`x < t` goes left; NaN goes right)
        let x = row.get(f).copied().unwrap_or(0.0);
        let right = x.partial_cmp(&t) != Some(std::cmp::Ordering::Less);
        let kids = node.children();
        match kids[usize::from(right)] {
            Some(n) => {
                path.push(right);
                node = n;
            }
            None => break,
        }
    }
    path
}
