//! TLS, mutual TLS and bearer tokens on the coordinator: calls without valid credentials get
//! Unauthenticated (or no connection) and change nothing; a worker with a certificate from the
//! right CA and the token registers and runs a job end to end over TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tokio::sync::watch;

use seqclust_coordinator::{Security, start_with};
use seqclust_meta::MemoryStore;
use seqclust_proto::security::{AuthConfig, BearerToken, TlsConfig};
use seqclust_proto::v1;
use seqclust_proto::v1::job_service_client::JobServiceClient;
use seqclust_proto::v1::worker_service_client::WorkerServiceClient;
use seqclust_proto::{MAX_MESSAGE_BYTES, PROTOCOL_VERSION};
use seqclust_tests::{make_dataset, runtime, seqclust_bin, small_spec, test_config};
use seqclust_worker::WorkerConfig;

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `localhost` / 127.0.0.1 signed by `ca`: (cert, key) written under `dir`.
fn leaf(
    dir: &Path,
    name: &str,
    ca: &CertifiedIssuer<'_, KeyPair>,
    client: bool,
) -> (PathBuf, PathBuf) {
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    p.distinguished_name.push(DnType::CommonName, name);
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, ca).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn tls_client(ca: &Path, cert: Option<(&Path, &Path)>) -> TlsConfig {
    TlsConfig {
        ca: Some(ca.to_path_buf()),
        cert: cert.map(|c| c.0.to_path_buf()),
        key: cert.map(|c| c.1.to_path_buf()),
        domain: "localhost".into(),
        ..TlsConfig::default()
    }
}

#[test]
fn tls_mutual_tls_and_tokens_admit_only_valid_credentials() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca_main = ca("seqclust test CA");
    let ca_rogue = ca("someone else");
    let ca_pem = d.join("ca.pem");
    std::fs::write(&ca_pem, ca_main.pem()).unwrap();
    let (server_cert, server_key) = leaf(d, "coordinator", &ca_main, false);
    let (worker_cert, worker_key) = leaf(d, "worker", &ca_main, true);
    let (rogue_cert, rogue_key) = leaf(d, "rogue", &ca_rogue, true);
    let tokens = d.join("tokens");
    std::fs::write(
        &tokens,
        "# job clients and workers\ns3cret-token\nsecond-token\n",
    )
    .unwrap();

    let security = Security::from_config(
        &TlsConfig {
            cert: Some(server_cert),
            key: Some(server_key),
            ca: Some(ca_pem.clone()),
            require_client_cert: true,
            ..TlsConfig::default()
        },
        &AuthConfig {
            tokens_file: Some(tokens.clone()),
        },
    )
    .unwrap();
    assert!(!format!("{security:?}").contains("s3cret"));
    let (stop, stopped) = watch::channel(false);
    let meta = Arc::new(MemoryStore::new("/sec/"));
    let running = rt
        .block_on(start_with(
            test_config("127.0.0.1:0"),
            meta,
            security,
            stopped,
        ))
        .unwrap();
    let url = format!("https://127.0.0.1:{}", running.addr.port());

    let jobs = |token: Option<&str>| {
        rt.block_on(async {
            let ch = tls_client(&ca_pem, None)
                .endpoint(&url)
                .unwrap()
                .connect()
                .await
                .unwrap();
            JobServiceClient::with_interceptor(ch, BearerToken::new(token).unwrap())
        })
    };
    let count = |token: &str| {
        rt.block_on(jobs(Some(token)).list_jobs(v1::ListJobsRequest::default()))
            .unwrap()
            .into_inner()
            .jobs
            .len()
    };
    assert_eq!(count("s3cret-token"), 0);
    assert_eq!(count("second-token"), 0);

    // no token, a wrong token: Unauthenticated, and nothing submitted
    let spec = small_spec(&d.display().to_string(), "secure", "nothing-yet", 1);
    for token in [None, Some("wrong"), Some("")] {
        let mut c = jobs(token);
        let e = rt
            .block_on(c.submit_job(v1::SubmitJobRequest {
                spec: Some((&spec).into()),
                idempotency_key: String::new(),
            }))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{token:?}: {e}");
        let e = rt
            .block_on(c.list_jobs(v1::ListJobsRequest::default()))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }
    assert_eq!(count("s3cret-token"), 0, "a refused call changed something");

    // plaintext to the TLS port does not get through
    let plain = rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!(
            "http://127.0.0.1:{}",
            running.addr.port()
        ))
        .unwrap()
        .connect()
        .await;
        match ch {
            Err(e) => Err(e.to_string()),
            Ok(ch) => JobServiceClient::new(ch)
                .list_jobs(v1::ListJobsRequest::default())
                .await
                .map(|_| ())
                .map_err(|s| s.to_string()),
        }
    });
    assert!(plain.is_err(), "a plaintext call succeeded");

    // WorkerService under mutual TLS: the token alone is not enough
    let register = |tls: TlsConfig| {
        rt.block_on(async {
            let ch = tls
                .endpoint(&url)
                .unwrap()
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let mut c = WorkerServiceClient::with_interceptor(
                ch,
                BearerToken::new(Some("s3cret-token")).unwrap(),
            )
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
            c.register_worker(v1::RegisterWorkerRequest {
                protocol_version: PROTOCOL_VERSION,
                name: "intruder".into(),
                collective_addr: "127.0.0.1:1".into(),
                threads: 1,
                code_version: "test".into(),
                collective: "ring".into(),
            })
            .await
            .map(|_| ())
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        })
    };
    let e = register(tls_client(&ca_pem, None)).unwrap_err();
    assert!(e.starts_with("Unauthenticated"), "{e}");
    // a certificate from another CA fails the handshake
    let e = register(tls_client(&ca_pem, Some((&rogue_cert, &rogue_key)))).unwrap_err();
    assert!(!e.is_empty());

    // a worker with the right certificate and token runs a job over TLS
    let ds = make_dataset(&rt, d, "secure-ds", 400);
    let (wstop, wrx) = watch::channel(false);
    let wcfg = WorkerConfig {
        coordinator: url.clone(),
        name: "tls-worker".into(),
        tls: tls_client(&ca_pem, Some((&worker_cert, &worker_key))),
        token: BearerToken::new(Some("s3cret-token")).unwrap(),
        connect_timeout: Duration::from_secs(20),
        ..WorkerConfig::default()
    };
    let worker = rt.spawn(seqclust_worker::run(wcfg, wrx));
    let spec = small_spec(&d.display().to_string(), "secure", &ds, 1);
    let mut c = jobs(Some("s3cret-token"));
    let id = rt
        .block_on(c.submit_job(v1::SubmitJobRequest {
            spec: Some((&spec).into()),
            idempotency_key: String::new(),
        }))
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let j = rt
            .block_on(c.get_job(v1::GetJobRequest { id: id.clone() }))
            .unwrap()
            .into_inner();
        assert!(j.error.is_empty(), "job failed: {}", j.error);
        if j.phase == v1::Phase::Succeeded as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "job stuck: {}", j.message);
        std::thread::sleep(Duration::from_millis(100));
    }
    // the command-line clients: --ca, --tls-domain, --token-file
    let status = |extra: &[&str]| {
        std::process::Command::new(seqclust_bin())
            .args([
                "status",
                "--coordinator",
                &url,
                "--ca",
                ca_pem.to_str().unwrap(),
            ])
            .args(["--tls-domain", "localhost"])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = status(&["--token-file", tokens.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&id));
    let o = status(&[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bearer token"), "{err}");

    let _ = wstop.send(true);
    let _ = rt.block_on(worker);
    let _ = stop.send(true);
    rt.block_on(running.join());
}

/// 100 concurrent SubmitJob calls from 10 clients (their own tokens): each client gets its
/// burst and then ResourceExhausted, nothing else fails, and only the admitted jobs exist.
/// With `max_pending_jobs`, submits beyond the bound are refused the same way, while a retry
/// of an admitted idempotency key still answers its job.
#[test]
fn submit_rate_and_pending_limits_refuse_with_resource_exhausted_only() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ds = make_dataset(&rt, d, "lim", 200);
    let tokens = d.join("tokens");
    let names: Vec<String> = (0..10).map(|i| format!("client-{i}-token")).collect();
    std::fs::write(&tokens, names.join("\n")).unwrap();
    let start = |rate: f64, burst: u32, pending: usize| {
        let security = Security::from_config(
            &TlsConfig::default(),
            &AuthConfig {
                tokens_file: Some(tokens.clone()),
            },
        )
        .unwrap();
        let mut cfg = test_config("127.0.0.1:0");
        cfg.submit_rate_per_s = rate;
        cfg.submit_burst = burst;
        cfg.max_pending_jobs = pending;
        let (stop, stopped) = watch::channel(false);
        let running = rt
            .block_on(start_with(
                cfg,
                Arc::new(MemoryStore::new("/lim/")),
                security,
                stopped,
            ))
            .unwrap();
        (stop, format!("http://127.0.0.1:{}", running.addr.port()))
    };
    let client = |url: &str, token: &str| {
        let (url, token) = (url.to_string(), token.to_string());
        async move {
            let ch = tonic::transport::Endpoint::from_shared(url)
                .unwrap()
                .connect()
                .await
                .unwrap();
            JobServiceClient::with_interceptor(ch, BearerToken::new(Some(&token)).unwrap())
        }
    };
    let spec = small_spec(&d.display().to_string(), "limited", &ds, 1);
    let submit = |url: String, token: String, key: String| {
        let spec = spec.clone();
        async move {
            let mut c = client(&url, &token).await;
            c.submit_job(v1::SubmitJobRequest {
                spec: Some((&spec).into()),
                idempotency_key: key,
            })
            .await
        }
    };

    // one submit per 10 s after a burst of 5, for each of the 10 clients
    let (_stop, url) = start(0.1, 5, 0);
    let calls: Vec<_> = (0..100)
        .map(|i| submit(url.clone(), names[i % 10].clone(), String::new()))
        .collect();
    let results = rt.block_on(futures::future::join_all(calls));
    let mut admitted = [0usize; 10];
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(_) => admitted[i % 10] += 1,
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s}");
                assert!(s.message().contains("rate limit"), "{s}");
                assert!(
                    !s.message().contains("client-"),
                    "a token in an answer: {s}"
                );
            }
        }
    }
    assert!(admitted.iter().all(|&n| n == 5), "{admitted:?}");
    let listed = rt.block_on(async {
        let mut c = client(&url, &names[0]).await;
        c.list_jobs(v1::ListJobsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .jobs
            .len()
    });
    assert_eq!(listed, 50, "refused submits changed something");

    // at most 3 jobs not yet ended (no workers: they stay pending)
    let (_stop2, url) = start(0.0, 1, 3);
    let first = rt
        .block_on(submit(url.clone(), names[0].clone(), "nightly".into()))
        .unwrap()
        .into_inner();
    let calls: Vec<_> = (0..10)
        .map(|i| submit(url.clone(), names[i % 10].clone(), String::new()))
        .collect();
    let results = rt.block_on(futures::future::join_all(calls));
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 2, "the bound of 3 admits two more");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), tonic::Code::ResourceExhausted, "{r}");
        assert!(r.message().contains("coordinator.max_pending_jobs"), "{r}");
    }
    let again = rt
        .block_on(submit(url.clone(), names[0].clone(), "nightly".into()))
        .unwrap()
        .into_inner();
    assert!(!again.created);
    assert_eq!(again.job.unwrap().id, first.job.unwrap().id);
}

/// etcd over TLS with client certificates (`[meta.etcd] ca`, `cert`, `key`): the store
/// connects and works; without a client certificate, or trusting another CA, it does not;
/// TLS settings that do not fit the endpoints are refused by name.
#[test]
fn etcd_over_tls_needs_the_right_ca_and_a_client_certificate() {
    use seqclust_meta::{EtcdConfig, EtcdStore, MetaStore};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca_main = ca("etcd test CA");
    let ca_rogue = ca("someone else");
    let (ca_pem, rogue_pem) = (d.join("ca.pem"), d.join("rogue.pem"));
    std::fs::write(&ca_pem, ca_main.pem()).unwrap();
    std::fs::write(&rogue_pem, ca_rogue.pem()).unwrap();
    let (server_cert, server_key) = leaf(d, "etcd", &ca_main, false);
    let (client_cert, client_key) = leaf(d, "coordinator", &ca_main, true);
    let Some(etcd) = seqclust_meta::conformance::etcd_server::spawned_tls_or_skip(
        "etcd_over_tls",
        server_cert,
        server_key,
        ca_pem.clone(),
    ) else {
        return;
    };
    let endpoint = etcd.endpoint();
    assert!(endpoint.starts_with("https://"));
    let config = EtcdConfig {
        endpoints: vec![endpoint.clone()],
        prefix: "/tls-test/".into(),
        timeout: Duration::from_secs(3),
        retries: 0,
        ca: Some(ca_pem.clone()),
        cert: Some(client_cert.clone()),
        key: Some(client_key.clone()),
        ..EtcdConfig::default()
    };
    let rt = runtime();
    rt.block_on(async {
        let store = EtcdStore::connect(config.clone()).await.unwrap();
        store.put("k", b"v".to_vec(), None).await.unwrap();
        assert_eq!(store.get("k").await.unwrap().unwrap().value, b"v".to_vec());
        // no client certificate: etcd's --client-cert-auth refuses the connection
        let anonymous = EtcdConfig {
            cert: None,
            key: None,
            ..config.clone()
        };
        assert!(EtcdStore::connect(anonymous).await.is_err());
        // trusting another CA: the members' certificates do not verify
        let wrong = EtcdConfig {
            ca: Some(rogue_pem.clone()),
            ..config.clone()
        };
        assert!(EtcdStore::connect(wrong).await.is_err());
    });
    let field = |c: EtcdConfig| match c.validate().unwrap_err() {
        seqclust_meta::Error::Config { field, .. } => field,
        e => panic!("{e}"),
    };
    assert_eq!(
        field(EtcdConfig {
            ca: None,
            ..config.clone()
        }),
        "ca"
    );
    assert_eq!(
        field(EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            ..config.clone()
        }),
        "endpoints"
    );
    assert_eq!(
        field(EtcdConfig {
            key: None,
            ..config.clone()
        }),
        "key"
    );
    // a CA file that is not there is named
    let missing = EtcdConfig {
        ca: Some(d.join("nope.pem")),
        ..config
    };
    let e = rt.block_on(EtcdStore::connect(missing)).unwrap_err();
    assert!(e.to_string().contains("nope.pem"), "{e}");
}
