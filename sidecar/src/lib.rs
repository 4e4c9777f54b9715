//! Sluice sidecar data plane (work in progress: see the sidecar issue).
