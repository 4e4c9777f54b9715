//! Sluice test rig: the Kubernetes API emulator (`emulator`), mock upstream
//! providers speaking each provider's wire format (`mock`), and the
//! end-to-end tests in `tests/`.

pub mod emulator;
pub mod mock;
