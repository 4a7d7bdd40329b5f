//! Release builds for Linux x86-64 place the functions a sidecar runs next to each other in the
//! executable, in the order of `sidecar.order` (written by `bench/profile.py --tool layout`).
//!
//! One executable serves every role, and the sidecar runs about 4 MiB of its 30 MiB of code.
//! Scattered over all of it, those functions made the kernel map (with its fault-around of
//! neighbouring pages) some 15 MiB of the executable into every idle sidecar; packed, a few MiB.
//! The linker there is rust-lld (the toolchain's default for this target), which reads a symbol
//! ordering file; names the file has and the executable does not are ignored, so a stale file
//! only loses the packing. `PLEXUS_NO_LAYOUT=1` builds without it (another linker, say).
//!
//! Where the C library reads them (glibc 2.36 and later), the executable's relative relocations
//! are packed (`-z pack-relative-relocs`): the dynamic loader reads all of them at every start,
//! and unpacked they were 1 MiB that stayed resident in every process.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=sidecar.order");
    println!("cargo:rerun-if-env-changed=PLEXUS_NO_LAYOUT");
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = env::var("TARGET").unwrap_or_default();
    if !release || target != "x86_64-unknown-linux-gnu" || env::var_os("PLEXUS_NO_LAYOUT").is_some()
    {
        return;
    }
    let Some(dir) = env::var_os("CARGO_MANIFEST_DIR") else {
        return;
    };
    let order = PathBuf::from(dir).join("sidecar.order");
    if order.exists() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    if glibc_reads_packed_relocations() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether this machine's glibc (the one the executable is linked against) is 2.36 or later,
/// which reads DT_RELR; `ldd --version` says `ldd (…) 2.36` on its first line.
fn glibc_reads_packed_relocations() -> bool {
    let Ok(out) = Command::new("ldd").arg("--version").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().last())
    else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    matches!((parts.next(), parts.next()), (Some(major), Some(minor)) if (major, minor) >= (2, 36))
}
