//! Checks that the protoc shipped in `protoc-bin-vendored` is there. The dependency itself is the
//! point: as a build dependency of this crate, Cargo downloads and unpacks it before any build
//! script runs, so `scripts/protoc` (the `PROTOC` of `.cargo/config.toml`) finds it when
//! etcd-client's build script generates etcd's gRPC code. A fresh machine needs no protoc.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(error) = protoc_bin_vendored::protoc_bin_path() {
        println!("cargo:warning=protoc-bin-vendored has no protoc for this platform: {error}");
    }
}
