//! k-means end to end: a golden run against scikit-learn, determinism across thread counts,
//! degenerate inputs, mini-batch and cosine.
#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use seqclust_kmeans::{
    Algorithm, Centroids, Error, Init, KMeansConfig, Metric, Points, adjusted_rand_index, fit,
    fit_from,
};

#[derive(serde::Deserialize)]
struct Golden {
    d: usize,
    x: Vec<f64>,
    init_rows: Vec<usize>,
    centers: Vec<f64>,
    labels: Vec<u32>,
    inertia: f64,
}

// tests/fixtures/golden_lloyd.json was written by (scikit-learn 1.9.1):
//   rng = np.random.default_rng(7)
//   centres = np.array([[0,0,0],[5,5,0],[0,5,5],[5,0,5]], float)
//   X = np.vstack([c + rng.normal(0, 1.0, (25, 3)) for c in centres]).astype(np.float32)
//   init = X[[0, 1, 30, 60]]      # two seeds in the first blob, none in the last
//   km = KMeans(n_clusters=4, init=init, n_init=1, max_iter=100, tol=0, algorithm="lloyd").fit(X)
//   -> cluster_centers_, labels_, inertia_ (= 243.04434204101562)
#[test]
fn lloyd_matches_scikit_learn() {
    let g: Golden = serde_json::from_str(include_str!("fixtures/golden_lloyd.json")).unwrap();
    let x: Vec<f32> = g.x.iter().map(|&v| v as f32).collect();
    let p = Points::new(&x, g.d).unwrap();
    let init = Centroids::from_rows(&p, &g.init_rows);
    let cfg = KMeansConfig {
        k: 4,
        max_iter: 100,
        tol: 0.0,
        min_improvement: 1e-12,
        ..KMeansConfig::default()
    };
    let model = fit_from(&p, init, &cfg).unwrap();
    for (a, b) in model.centroids.as_slice().iter().zip(&g.centers) {
        assert!(
            (f64::from(*a) - b).abs() < 1e-5,
            "{:?} vs {:?}",
            model.centroids.as_slice(),
            g.centers
        );
    }
    let asg = model.predict(&p);
    let labels: Vec<u32> = asg.iter().map(|a| a.cluster).collect();
    assert_eq!(labels, g.labels);
    let inertia: f64 = asg.iter().map(|a| f64::from(a.distance)).sum();
    assert!(
        (inertia - g.inertia).abs() / g.inertia < 1e-5,
        "{inertia} vs {}",
        g.inertia
    );
}

fn blobs(n_per: usize, centres: &[[f32; 2]]) -> (Vec<f32>, Vec<u64>) {
    let mut x = Vec::new();
    let mut truth = Vec::new();
    let mut s: u64 = 12345;
    let mut u = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    for (c, ctr) in centres.iter().enumerate() {
        for _ in 0..n_per {
            x.push(ctr[0] + u());
            x.push(ctr[1] + u());
            truth.push(c as u64);
        }
    }
    (x, truth)
}

const FIVE: [[f32; 2]; 5] = [
    [0.0, 0.0],
    [10.0, 0.0],
    [0.0, 10.0],
    [10.0, 10.0],
    [20.0, 20.0],
];

#[test]
fn same_result_for_any_thread_count() {
    let (x, _) = blobs(3000, &FIVE);
    let p = Points::new(&x, 2).unwrap();
    for algorithm in [Algorithm::Lloyd, Algorithm::MiniBatch] {
        let cfg = KMeansConfig {
            k: 5,
            algorithm,
            batch_size: 512,
            epochs: 3.0,
            ..KMeansConfig::default()
        };
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| fit(&p, &cfg).unwrap());
        let two = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
            .install(|| fit(&p, &cfg).unwrap());
        assert_eq!(one.centroids, two.centroids, "{algorithm:?}: bit-identical");
    }
}

#[test]
fn finds_planted_blobs_with_every_algorithm_and_init() {
    let (x, truth) = blobs(400, &FIVE);
    let p = Points::new(&x, 2).unwrap();
    for init in [Init::Random, Init::KMeansPlusPlus, Init::default()] {
        for algorithm in [Algorithm::Lloyd, Algorithm::MiniBatch] {
            let cfg = KMeansConfig {
                k: 5,
                init,
                algorithm,
                batch_size: 256,
                epochs: 20.0,
                seed: 3,
                ..KMeansConfig::default()
            };
            let m = fit(&p, &cfg).unwrap();
            let labels: Vec<u64> = m.predict(&p).iter().map(|a| u64::from(a.cluster)).collect();
            let ari = adjusted_rand_index(&truth, &labels);
            // random init may merge two blobs; the seeded inits must not
            let want = if init == Init::Random { 0.7 } else { 0.999 };
            assert!(ari >= want, "{init:?} {algorithm:?}: ARI {ari}");
            assert_eq!(m.empty, 0);
        }
    }
}

#[test]
fn empty_clusters_are_reseeded() {
    let (x, _) = blobs(200, &FIVE);
    let p = Points::new(&x, 2).unwrap();
    // three centroids far from every point
    let init = Centroids::new(
        vec![
            0.0, 0.0, 10.0, 10.0, 500.0, 500.0, 600.0, 600.0, 700.0, 700.0,
        ],
        2,
    )
    .unwrap();
    let m = fit_from(
        &p,
        init,
        &KMeansConfig {
            k: 5,
            ..KMeansConfig::default()
        },
    )
    .unwrap();
    let mut counts = [0usize; 5];
    for a in m.predict(&p) {
        counts[a.cluster as usize] += 1;
    }
    assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    assert!(m.reseeded >= 3);
}

#[test]
fn degenerate_inputs() {
    // n < k
    let x = [1.0f32, 2.0, 3.0];
    let p = Points::new(&x, 1).unwrap();
    assert_eq!(
        fit(
            &p,
            &KMeansConfig {
                k: 4,
                ..KMeansConfig::default()
            }
        )
        .unwrap_err(),
        Error::TooFewPoints { n: 3, k: 4 }
    );
    // NaN names its row
    let e = Points::new(&[0.0, 1.0, f32::INFINITY, 2.0], 2).unwrap_err();
    assert!(e.to_string().contains("row 1"), "{e}");
    // k = 1 and d = 1
    let x: Vec<f32> = (0..50).map(|i| i as f32).collect();
    let p = Points::new(&x, 1).unwrap();
    let m = fit(
        &p,
        &KMeansConfig {
            k: 1,
            ..KMeansConfig::default()
        },
    )
    .unwrap();
    assert!((m.centroids.row(0)[0] - 24.5).abs() < 1e-4);
    let a = m.predict(&p);
    assert_eq!(a[0].runner_up, u32::MAX);
    // all points identical: one distinct point cannot make three clusters; reported, no panic
    let same = vec![3.0f32; 40];
    let p = Points::new(&same, 2).unwrap();
    let m = fit(
        &p,
        &KMeansConfig {
            k: 3,
            ..KMeansConfig::default()
        },
    )
    .unwrap();
    assert_eq!(m.empty, 2);
    // duplicates with enough distinct points: every cluster non-empty
    let mut dup = Vec::new();
    for v in [0.0f32, 5.0, 9.0] {
        for _ in 0..30 {
            dup.extend([v, v]);
        }
    }
    let p = Points::new(&dup, 2).unwrap();
    for init in [Init::Random, Init::KMeansPlusPlus, Init::default()] {
        let m = fit(
            &p,
            &KMeansConfig {
                k: 3,
                init,
                ..KMeansConfig::default()
            },
        )
        .unwrap();
        assert_eq!(m.empty, 0, "{init:?}");
    }
    // bad settings name the field
    let e = fit(
        &p,
        &KMeansConfig {
            k: 0,
            ..KMeansConfig::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("k"), "{e}");
    let e = fit(
        &p,
        &KMeansConfig {
            k: 2,
            algorithm: Algorithm::MiniBatch,
            batch_size: 0,
            ..KMeansConfig::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("batch_size"), "{e}");
}

#[test]
fn cosine_clusters_directions() {
    // directions matter, lengths do not
    let mut x = Vec::new();
    let mut truth = Vec::new();
    for i in 0..300 {
        let len = 1.0 + (i % 7) as f32;
        let (dx, dy) = match i % 3 {
            0 => (1.0, 0.05),
            1 => (0.05, 1.0),
            _ => (-1.0, -1.0),
        };
        x.extend([dx * len, dy * len]);
        truth.push((i % 3) as u64);
    }
    let p = Points::new(&x, 2).unwrap();
    let m = fit(
        &p,
        &KMeansConfig {
            k: 3,
            metric: Metric::Cosine,
            ..KMeansConfig::default()
        },
    )
    .unwrap();
    for c in 0..3 {
        let r = m.centroids.row(c);
        assert!(
            ((r[0] * r[0] + r[1] * r[1]).sqrt() - 1.0).abs() < 1e-5,
            "unit centroids"
        );
    }
    let labels: Vec<u64> = m.predict(&p).iter().map(|a| u64::from(a.cluster)).collect();
    assert!(adjusted_rand_index(&truth, &labels) > 0.99);
    let zero = [0.0f32, 0.0, 1.0, 1.0];
    let e = fit(
        &Points::new(&zero, 2).unwrap(),
        &KMeansConfig {
            k: 1,
            metric: Metric::Cosine,
            ..KMeansConfig::default()
        },
    );
    assert!(matches!(e, Err(Error::ZeroVector { row: 0 })));
}
