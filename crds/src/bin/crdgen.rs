//! Writes the CRDs generated from the API types into `charts/sluice/crds/`
//! (or the directory given as the first argument).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/sluice/crds"));
    std::fs::create_dir_all(&dir)?;
    for (file, crd) in sluice_crds::crd::all() {
        let path = dir.join(file);
        std::fs::write(&path, sluice_crds::crd::to_yaml(&crd)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
