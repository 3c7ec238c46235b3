//! Property-based fuzzing of the coordinator's WorkerService handlers (bounded: a few hundred
//! cases per run). Arbitrary registrations, heartbeats, results, progress reports, chunked
//! uploads, centroid fetches and control requests — with ids, epochs and payloads arbitrary
//! or those of a real task in flight — are answered only with OK, InvalidArgument, NotFound
//! or FailedPrecondition (never a panic, an internal error or a dropped connection), and the
//! real task stays in flight: afterwards its genuine result still drives the job.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tonic::Code;
use tonic::transport::Channel;

use seqclust_job::Phase;
use seqclust_proto::PROTOCOL_VERSION;
use seqclust_proto::convert::phase_of;
use seqclust_proto::v1::worker_service_client::WorkerServiceClient;
use seqclust_proto::v1::{self, TaskKind};
use seqclust_tests::TestCluster;

/// The real task in flight, and its worker.
#[derive(Clone, Debug)]
struct Real {
    worker: String,
    task: String,
    epoch: u64,
    job: String,
}

#[derive(Clone, Debug)]
enum Call {
    Register {
        version: u32,
        name: String,
        addr: String,
        collective: String,
    },
    Heartbeat(String),
    Complete(v1::TaskResult),
    Progress(v1::Progress),
    Push(Vec<v1::PartialChunk>),
    Fetch(String, u64),
    Control(String),
}

/// An id: the real one or anything.
fn id(real: String) -> impl Strategy<Value = String> {
    prop_oneof![Just(real), ".{0,24}", "[a-z0-9-]{1,12}"]
}

fn epoch(real: u64) -> impl Strategy<Value = u64> {
    prop_oneof![Just(real), Just(real + 1), Just(0u64), any::<u64>()]
}

fn call(r: Real) -> impl Strategy<Value = Call> {
    let register = (
        prop_oneof![Just(PROTOCOL_VERSION), any::<u32>()],
        ".{0,16}",
        prop_oneof![Just("127.0.0.1:1".to_string()), ".{0,24}"],
        prop_oneof![Just("ring".to_string()), Just("nccl".to_string()), ".{0,8}"],
    )
        .prop_map(|(version, name, addr, collective)| Call::Register {
            version,
            name,
            addr,
            collective,
        });
    let result = (
        id(r.worker.clone()),
        id(r.task.clone()),
        epoch(r.epoch),
        any::<bool>(),
        any::<bool>(),
        ".{0,32}",
        any::<u64>(),
        prop_oneof![Just(String::new()), Just("{}".to_string()), ".{0,32}"],
    )
        .prop_map(
            |(worker_id, task_id, membership_epoch, ok, retryable, error, users, summary_json)| {
                Call::Complete(v1::TaskResult {
                    worker_id,
                    task_id,
                    membership_epoch,
                    ok,
                    error,
                    retryable,
                    users,
                    summary_json,
                })
            },
        );
    let progress = (
        id(r.worker.clone()),
        id(r.task.clone()),
        any::<f64>(),
        ".{0,32}",
    )
        .prop_map(|(worker_id, task_id, fraction, message)| {
            Call::Progress(v1::Progress {
                worker_id,
                task_id,
                fraction,
                message,
            })
        });
    let chunk = (
        id(r.worker.clone()),
        id(r.task.clone()),
        epoch(r.epoch),
        prop_oneof![Just(0u64), 0u64..64, any::<u64>()],
        prop_oneof![0u64..64, Just(u64::MAX), any::<u64>()],
        proptest::collection::vec(any::<u8>(), 0..48),
    )
        .prop_map(
            |(worker_id, task_id, membership_epoch, offset, total, data)| v1::PartialChunk {
                worker_id,
                task_id,
                membership_epoch,
                offset,
                total,
                data,
            },
        );
    prop_oneof![
        register,
        id(r.worker.clone()).prop_map(Call::Heartbeat),
        result,
        progress,
        proptest::collection::vec(chunk, 0..4).prop_map(Call::Push),
        (id(r.job.clone()), any::<u64>()).prop_map(|(j, v)| Call::Fetch(j, v)),
        ".{0,24}".prop_map(Call::Control),
    ]
}

/// The answer's code (OK included).
async fn answer(c: &mut WorkerServiceClient<Channel>, call: Call, r: &Real) -> Code {
    let code = |res: Result<(), tonic::Status>| res.err().map_or(Code::Ok, |s| s.code());
    match call {
        Call::Register {
            version,
            name,
            addr,
            collective,
        } => code(
            c.register_worker(v1::RegisterWorkerRequest {
                protocol_version: version,
                name,
                collective_addr: addr,
                threads: 1,
                code_version: "fuzz".into(),
                collective,
            })
            .await
            .map(drop),
        ),
        Call::Heartbeat(w) => code(
            c.heartbeat(v1::HeartbeatRequest { worker_id: w })
                .await
                .map(drop),
        ),
        Call::Complete(mut res) => {
            // the genuine triple would complete the real task: keep it in flight
            if (&res.worker_id, &res.task_id, res.membership_epoch) == (&r.worker, &r.task, r.epoch)
            {
                res.membership_epoch += 1;
            }
            code(c.complete_task(res).await.map(drop))
        }
        Call::Progress(p) => code(c.report_progress(p).await.map(drop)),
        Call::Push(chunks) => code(c.push_partials(tokio_stream::iter(chunks)).await.map(drop)),
        Call::Fetch(job, version) => {
            match c
                .fetch_centroids(v1::FetchCentroidsRequest {
                    job_id: job,
                    version,
                })
                .await
            {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            }
        }
        Call::Control(w) => {
            // another control stream of the real worker would replace its own
            if w == r.worker {
                return Code::Ok;
            }
            match c.control(v1::ControlRequest { worker_id: w }).await {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            }
        }
    }
}

#[test]
fn worker_service_handlers_answer_arbitrary_calls_with_expected_codes_only() {
    let c = TestCluster::new();
    let ds = c.dataset("people", 200);
    let url = c.url();
    let mut client =
        c.rt.block_on(async { WorkerServiceClient::connect(url.clone()).await.unwrap() });
    // a fake worker takes the job's TRAIN task and keeps its lease alive meanwhile
    let reg =
        c.rt.block_on(client.register_worker(v1::RegisterWorkerRequest {
            protocol_version: PROTOCOL_VERSION,
            name: "fuzz".into(),
            collective_addr: "127.0.0.1:1".into(),
            threads: 1,
            code_version: "fuzz".into(),
            collective: "ring".into(),
        }))
        .unwrap()
        .into_inner();
    let me = reg.worker_id.clone();
    let mut stream =
        c.rt.block_on(client.control(v1::ControlRequest {
            worker_id: me.clone(),
        }))
        .unwrap()
        .into_inner();
    let mut hb = client.clone();
    let hb_id = me.clone();
    let beating = c.rt.spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = hb
                .heartbeat(v1::HeartbeatRequest {
                    worker_id: hb_id.clone(),
                })
                .await;
        }
    });
    let job = c.submit(&c.spec("fuzzed", &ds, 1));
    let task = c
        .rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), stream.message()).await })
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(TaskKind::try_from(task.kind).unwrap(), TaskKind::Train);
    let real = Real {
        worker: me.clone(),
        task: task.task_id.clone(),
        epoch: task.membership_epoch,
        job: job.clone(),
    };
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let allowed = [
        Code::Ok,
        Code::InvalidArgument,
        Code::NotFound,
        Code::FailedPrecondition,
    ];
    let seen = std::cell::RefCell::new(std::collections::BTreeMap::new());
    runner
        .run(&call(real.clone()), |call| {
            let what = format!("{call:?}");
            let mut cl = client.clone();
            let code = c.rt.block_on(answer(&mut cl, call, &real));
            *seen
                .borrow_mut()
                .entry(format!("{code:?}"))
                .or_insert(0usize) += 1;
            prop_assert!(allowed.contains(&code), "{code:?} for {what}");
            Ok(())
        })
        .unwrap();
    eprintln!("answers: {:?}", seen.borrow());
    // the real task is still in flight: its genuine (failed, final) result ends the job with it
    c.rt.block_on(client.complete_task(v1::TaskResult {
        worker_id: me,
        task_id: real.task.clone(),
        membership_epoch: real.epoch,
        ok: false,
        error: "the fuzzing is over".into(),
        ..Default::default()
    }))
    .unwrap();
    let j = c
        .wait_for(&job, Duration::from_secs(30), |j| {
            phase_of(j).is_ok_and(Phase::is_terminal)
        })
        .unwrap();
    assert_eq!(phase_of(&j).unwrap(), Phase::Failed);
    assert!(j.error.contains("the fuzzing is over"), "{}", j.error);
    beating.abort();
}
