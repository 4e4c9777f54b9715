//! Writes the token vocabularies the sidecar counts with
//! (`src/tokens/bpe.rs`) into `OUT_DIR`, read out of tiktoken-rs at build
//! time: at run time the sidecar then loads one flat table per encoding
//! and never builds tiktoken-rs's encoder, which holds every token three
//! times over in separate heap allocations (≈46 MiB for `o200k_base`) and
//! leaves ≈30 MiB of fragmented heap behind even when dropped.
//!
//! Format, per ordinary (non-special) token in rank order: the rank
//! (`u32` little-endian), the byte length (`u16` little-endian), the bytes.

use std::error::Error;
use std::io::Write;
use std::path::Path;

/// Ranks tried: o200k_base's highest is 200,018, cl100k_base's 100,276.
const MAX_RANK: u32 = 1 << 18;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo::rerun-if-changed=build.rs");
    let out = std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?;
    let out = Path::new(&out);
    write(&tiktoken_rs::o200k_base()?, &out.join("o200k_base.ranks"))?;
    write(&tiktoken_rs::cl100k_base()?, &out.join("cl100k_base.ranks"))?;
    Ok(())
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
