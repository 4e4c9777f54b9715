//! Sluice test rig: mock upstream providers (`mock`), and, on other
//! branches, the Kubernetes API emulator and end-to-end tests.

pub mod mock;
