//! Bounded fuzzing of the job API's wire form (proptest, a few thousand cases per run): what
//! a SubmitJob handler does with a message — decode, convert to a `JobSpec`, validate — never
//! panics, refusals name the field, and every spec that validates survives the round trip.
//! Also what the WorkerService upload handler does with chunks: reassembly never panics,
//! never holds more than its limit, and yields exactly the bytes of in-order chunks; a
//! seeding sample decodes or is refused, never panics.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use prost::Message;

use seqclust_job::JobSpec;
use seqclust_proto::{Reassembly, Sample, v1};

/// Names that are sometimes valid, sometimes not.
fn word(valid: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        proptest::sample::select(valid).prop_map(|s| Some(s.to_string())),
        "[a-z_ ]{0,12}".prop_map(Some),
    ]
}

fn small() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![
        Just(None),
        (0u32..300).prop_map(Some),
        any::<u32>().prop_map(Some)
    ]
}

fn real() -> impl Strategy<Value = Option<f32>> {
    prop_oneof![
        Just(None),
        (-1.0f32..2.0).prop_map(Some),
        any::<f32>().prop_map(Some),
    ]
}

prop_compose! {
    fn spec()(
        name in "[a-z0-9/ .-]{0,10}",
        uri in "[a-z]{0,6}",
        kind in word(&["gru", "lstm", "transformer", "bi_transformer"]),
        pooling in word(&["last", "mean"]),
        dim in small(), layers in small(), heads in small(), max_len in small(),
        dropout in real(),
        epochs in small(), batch in small(), lr in real(), stop in small(),
        resume in proptest::option::of("[a-z/]{0,8}"),
        init in proptest::option::of("[a-z/]{0,8}"),
        k in small(),
        metric in word(&["l2", "cosine"]),
        algorithm in word(&["lloyd", "mini_batch"]),
        kepochs in proptest::option::of(any::<f64>()),
        min_w in small(), max_w in small(),
    ) -> v1::JobSpec {
        v1::JobSpec {
            name,
            dataset: Some(v1::DatasetSpec { uri, root: "/tmp".into() }),
            encoder: Some(v1::EncoderSpec {
                kind, pooling, dim, layers, heads, max_len, dropout,
                ..Default::default()
            }),
            train: Some(v1::TrainSpec {
                epochs, batch_size: batch, lr, stop_after_epochs: stop,
                resume_from: resume, init_from: init,
                ..Default::default()
            }),
            kmeans: Some(v1::KMeansSpec {
                k, metric, algorithm, epochs: kepochs,
                ..Default::default()
            }),
            resources: Some(v1::Resources { min_workers: min_w, max_workers: max_w }),
            ..Default::default()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn structured_specs_convert_validate_and_round_trip(wire in spec()) {
        match JobSpec::try_from(wire) {
            Err(e) => prop_assert!(e.field_name().is_some_and(|f| !f.is_empty()), "{e}"),
            Ok(s) => match s.validate() {
                Err(e) => prop_assert!(e.field_name().is_some_and(|f| !f.is_empty()), "{e}"),
                Ok(()) => {
                    let back = JobSpec::try_from(v1::JobSpec::from(&s)).unwrap();
                    prop_assert_eq!(back, s);
                }
            },
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_handler_path(
        bytes in proptest::collection::vec(any::<u8>(), 0..600)
    ) {
        if let Ok(req) = v1::SubmitJobRequest::decode(bytes.as_slice())
            && let Some(wire) = req.spec
            && let Ok(s) = JobSpec::try_from(wire)
        {
            let _ = s.validate();
        }
    }

    #[test]
    fn toml_job_specs_parse_or_name_the_line(
        table in proptest::sample::select(&["encoder", "train", "kmeans", "objective", "resources", "analysis"][..]),
        key in "[a-z_]{1,14}",
        value in prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| format!("{v:?}")),
            "\"[a-z ]{0,8}\"".prop_map(|v| v),
            Just("true".to_string()),
            Just("[1, 2]".to_string()),
        ],
    ) {
        let text = format!("name = \"j\"\n[dataset]\nuri = \"d\"\n[{table}]\n{key} = {value}\n");
        match JobSpec::from_toml_str(&text) {
            Err(e) => prop_assert!(e.to_string().contains("line"), "{e}"),
            Ok(s) => { let _ = s.validate(); }
        }
    }

    #[test]
    fn chunk_reassembly_never_panics_and_keeps_to_its_limit(
        chunks in proptest::collection::vec(
            (prop_oneof![0u64..80, any::<u64>()], prop_oneof![0u64..80, any::<u64>()],
             proptest::collection::vec(any::<u8>(), 0..40)),
            0..6),
        limit in 0usize..100,
    ) {
        let mut r = Reassembly::new(limit);
        let mut accepted = Vec::new();
        let mut failed = false;
        for (offset, total, data) in &chunks {
            match r.push(*offset, *total, data) {
                Ok(()) => {
                    prop_assert!(*total as usize <= limit);
                    prop_assert_eq!(*offset as usize, accepted.len());
                    accepted.extend_from_slice(data);
                }
                Err(e) => { prop_assert!(!e.is_empty()); failed = true; break; }
            }
        }
        if !failed && let Ok(payload) = r.finish() {
            prop_assert_eq!(payload, accepted);
        }
    }

    #[test]
    fn seeding_samples_decode_or_are_refused(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        n in 0usize..6, d in 1usize..4, at in any::<usize>(), byte in any::<u8>(),
    ) {
        if let Ok(s) = Sample::from_bytes(&bytes) {
            prop_assert_eq!(s.to_bytes(), bytes);
        }
        let good = Sample { d, keys: (0..n as u64).collect(), rows: vec![0.5; n * d] };
        let mut b = good.to_bytes();
        prop_assert_eq!(Sample::from_bytes(&b), Ok(good));
        let i = at % b.len();
        b[i] = byte;
        if let Ok(s) = Sample::from_bytes(&b) {
            prop_assert!(s.rows.iter().all(|v| v.is_finite()));
            prop_assert_eq!(s.to_bytes(), b);
        }
    }
}
