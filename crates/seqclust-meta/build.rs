//! Nothing to generate: the build script exists so that the `protoc-bin-vendored`
//! build-dependency is downloaded before etcd-client's build script runs protoc through
//! `scripts/protoc` (see `.cargo/config.toml`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
