//! Sluice test rig: the Kubernetes API emulator (`emulator`), mock upstream
//! providers speaking each provider's wire format (`mock`), the real
//! kubectl and helm as tests run them (`kubectl`, `tools`), and the
//! end-to-end tests in `tests/`.

pub mod emulator;
pub mod kubectl;
pub mod mock;
pub mod ports;
pub mod tools;
