//! Links the skiff binaries as position-dependent executables on glibc targets.
//!
//! The process runtime starts one supervisor per container, and a supervisor is this
//! binary started again (DESIGN.md §6). As a position-independent executable, each start
//! had the dynamic loader apply ~19,000 relocations to 1.3 MB of vtables and tables, a
//! copy-on-write page fault each page: 12 % of all CPU in `scripts/bench throughput`,
//! more than the command it supervised. Linked at a fixed address, those pages are
//! mapped from the file untouched. The cost is address-space randomisation of the
//! executable's own image (libraries, stack and heap stay randomised); Go's container
//! tooling (dockerd, containerd and its shims) ships the same way.
//!
//! Only for `bin` targets: tests and the library stay as they are. musl targets (the
//! image) keep their static-pie default.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
