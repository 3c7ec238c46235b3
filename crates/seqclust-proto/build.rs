//! Generates the protocol code from `proto/seqclust/v1/*.proto` with a vendored protoc, so
//! that no system protobuf compiler is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing else reads the environment now.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "seqclust/v1/job.proto",
        "seqclust/v1/worker.proto",
        "seqclust/v1/inference.proto",
    ]
    .map(|f| root.join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_prost_build::configure().compile_protos(&files, &[root])?;
    Ok(())
}
