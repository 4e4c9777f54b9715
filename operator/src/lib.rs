//! Sluice operator (work in progress: see the operator issue).
