//! Sluice test rig: the Kubernetes API emulator (more to come: mock
//! providers, end-to-end scenarios).

pub mod emulator;
