//! Reports from sidecars folded into status (work in progress).
