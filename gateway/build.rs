//! Link the `fieldgate` binary with packed relative relocations (DT_RELR, glibc 2.36 and
//! binutils 2.38 or later: Debian 12, Ubuntu 22.04). The binary is position-independent, and
//! its 150,000-odd relative relocations took 3.7 MiB as a classic table, which the dynamic
//! loader reads whole at every start, so all of it stayed resident; packed, they take a few
//! kilobytes. Nothing else changes: the same code, at a random address.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bin=fieldgate=-Wl,-z,pack-relative-relocs");
    }
}
