//! Writes the token vocabularies the sidecar counts with
//! (`src/tokens/bpe.rs`) into `OUT_DIR`, read out of tiktoken-rs at build
//! time: at run time the sidecar then loads one flat table per encoding
//! and never builds tiktoken-rs's encoder, which holds every token three
//! times over in separate heap allocations (≈46 MiB for `o200k_base`) and
//! leaves ≈30 MiB of fragmented heap behind even when dropped.
//!
//! Format, per ordinary (non-special) token in rank order: the rank
//! (`u32` little-endian), the byte length (`u16` little-endian), the bytes.
//!
//! Also hands `symbol-order.txt` to the linker for release builds of the
//! `sluice-sidecar` binary (see [`symbol_order`]).

use std::error::Error;
use std::io::Write;
use std::path::Path;

/// Ranks tried: o200k_base's highest is 200,018, cl100k_base's 100,276.
const MAX_RANK: u32 = 1 << 18;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo::rerun-if-changed=build.rs");
    symbol_order();
    let out = std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?;
    let out = Path::new(&out);
    write(&tiktoken_rs::o200k_base()?, &out.join("o200k_base.ranks"))?;
    write(&tiktoken_rs::cl100k_base()?, &out.join("cl100k_base.ranks"))?;
    Ok(())
}

/// Release builds of the binary place the functions the request path runs
/// side by side, in the order `symbol-order.txt` lists them (written by
/// `scripts/symbol-order.sh` from a profile): scattered over the binary
/// they spanned twice as many 4 KiB pages, and a sidecar that serves a
/// request every few milliseconds finds them cold in the caches and TLB
/// every time (`sidecar/README.md`, "Code layout"). Only where rustc links
/// with its own lld: x86_64 Linux (GNU), Rust 1.90 or later, no linker of
/// the user's choosing; `SLUICE_SYMBOL_ORDER=0` turns it off regardless.
fn symbol_order() {
    println!("cargo::rerun-if-changed=symbol-order.txt");
    println!("cargo::rerun-if-env-changed=SLUICE_SYMBOL_ORDER");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let lld_target = var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu";
    // A linker set in cargo's config, or through rustflags, may not be lld.
    let own_linker = !var("RUSTC_LINKER").is_empty()
        || var("CARGO_ENCODED_RUSTFLAGS").split('\x1f').any(|f| {
            f.contains("linker") || f.contains("fuse-ld") || f.contains("link-self-contained")
        });
    if var("PROFILE") != "release"
        || !lld_target
        || own_linker
        || !rustc_links_with_lld(&var("RUSTC"))
        || var("SLUICE_SYMBOL_ORDER") == "0"
    {
        return;
    }
    let file = Path::new(&var("CARGO_MANIFEST_DIR")).join("symbol-order.txt");
    if std::fs::metadata(&file).is_ok_and(|m| m.len() > 0) {
        let bin = "cargo::rustc-link-arg-bin=sluice-sidecar";
        println!("{bin}=-Wl,--symbol-ordering-file={}", file.display());
        // Names a newer build no longer has are expected, not news.
        println!("{bin}=-Wl,--no-warn-symbol-ordering");
    }
}

/// rustc links x86_64 Linux binaries with its bundled lld from 1.90 on
/// (before, with the system's `cc` and whatever `ld` that runs).
fn rustc_links_with_lld(rustc: &str) -> bool {
    let Ok(out) = std::process::Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(release) = text.lines().find_map(|l| l.strip_prefix("release: ")) else {
        return false;
    };
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}

fn write(bpe: &tiktoken_rs::CoreBPE, path: &Path) -> Result<(), Box<dyn Error>> {
    let special: Vec<&[u8]> = bpe
        .special_tokens()
        .into_iter()
        .map(str::as_bytes)
        .collect();
    let mut buf = Vec::new();
    for rank in 0..MAX_RANK {
        let Ok(bytes) = bpe.decode_bytes(&[rank]) else {
            continue;
        };
        if special.contains(&bytes.as_slice()) {
            continue;
        }
        buf.extend_from_slice(&rank.to_le_bytes());
        buf.extend_from_slice(&u16::try_from(bytes.len())?.to_le_bytes());
        buf.extend_from_slice(&bytes);
    }
    std::fs::File::create(path)?.write_all(&buf)?;
    Ok(())
}
