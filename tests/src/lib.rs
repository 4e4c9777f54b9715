//! Sluice test rig (work in progress).
