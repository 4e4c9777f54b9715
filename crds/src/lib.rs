//! The Sluice API: the `Provider`, `LLMRoute` and `Budget` custom resources
//! (group `sluice.dev`, version `v1alpha1`), their validation, and the types
//! the operator and the sidecars exchange.
//!
//! Validation happens in three layers, each as early as it can:
//! - the CRD schema and its CEL rules (generated from these types) refuse
//!   what one object shows to be wrong, at admission;
//! - [`semantic`] checks what needs several objects (references, models,
//!   reachability) and says why, for status conditions and standalone loads;
//! - [`load`] applies both to standalone YAML, where there is no API server.

pub mod budget;
pub mod common;
pub mod crd;
pub mod load;
pub mod provider;
pub mod report;
pub mod route;
pub mod schema_check;
pub mod selector;
pub mod semantic;
pub mod snapshot;
pub mod units;

pub use budget::{Budget, BudgetSpec, BudgetStatus};
pub use common::{FailureClass, ModelRef, ProviderRef, Trigger};
pub use provider::{Provider, ProviderSpec, ProviderStatus, ProviderType};
pub use route::{LLMRoute, LLMRouteSpec, LLMRouteStatus};
pub use units::{Duration, Money};
