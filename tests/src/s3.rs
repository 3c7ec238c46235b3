//! A real S3-compatible endpoint for tests: `s3s-fs` (S3 over a directory, with signature
//! checks) served in-process on loopback.

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

/// Access key of the test endpoint.
pub const ACCESS_KEY: &str = "seqclust-test";
/// Secret key of the test endpoint.
pub const SECRET_KEY: &str = "seqclust-test-secret";
/// The bucket every test uses.
pub const BUCKET: &str = "seqclust";

/// A running endpoint; stops when dropped.
pub struct LocalS3 {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The directory it serves.
    pub dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LocalS3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LocalS3 {
    /// Starts an endpoint with one empty bucket (call inside a tokio runtime).
    pub async fn start() -> LocalS3 {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join(BUCKET)).expect("bucket dir");
        let fs = s3s_fs::FileSystem::new(dir.path()).expect("s3s-fs root");
        let mut b = S3ServiceBuilder::new(fs);
        b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = b.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let conn = http
                    .serve_connection(TokioIo::new(sock), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        LocalS3 {
            endpoint,
            dir,
            task,
        }
    }

    /// An object store client for the bucket.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store_with(SECRET_KEY)
    }

    /// A client signing with `secret` (a wrong one is refused by the endpoint).
    pub fn store_with(&self, secret: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false)
                .with_region("us-east-1")
                .with_bucket_name(BUCKET)
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(secret)
                .build()
                .expect("s3 client"),
        )
    }
}
