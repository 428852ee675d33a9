//! Link the `fieldgate` binary with packed relative relocations (DT_RELR: binutils 2.38 to
//! link, glibc 2.36 to run, so Debian 12 and later; docs/deploy.md). The binary is
//! position-independent, and its 160,000 relative relocations took 3.7 MiB as a classic table,
//! which the dynamic loader reads whole at every start, so all of it stayed resident; packed,
//! they take 45 KB. Nothing else changes: the same code, at a random address.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bin=fieldgate=-Wl,-z,pack-relative-relocs");
    }
}
