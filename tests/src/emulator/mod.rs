//! A Kubernetes API emulator for tests (see DESIGN.md, "Testing strategy").

pub mod error;
pub mod patch;
pub mod registry;
pub mod schema;
pub mod selector;
pub mod store;
pub mod table;
