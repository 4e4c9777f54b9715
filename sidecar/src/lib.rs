//! Sluice sidecar: the OpenAI-compatible data plane every application
//! request passes through.
//!
//! A request meets, in order: [`ingress`] (parse, limits, validation),
//! [`policy`] (PII, rate limits, budget reservations, idempotency, cache),
//! [`route`] (which route and in which order its targets), [`attempt`]
//! (timeouts, retries, breakers, fallback) calling a
//! [`provider`] adapter (pure translation) over [`egress`] (the one client
//! that talks to providers), then the response and accounting in
//! [`pipeline`], which reads top to bottom.

pub mod access_log;
pub mod accounting;
pub mod app;
pub mod attempt;
pub mod balance;
pub mod body;
pub mod breaker;
pub mod budget;
pub mod cache;
pub mod cluster;
pub mod complexity;
pub mod config;
pub mod egress;
pub mod error;
pub mod framing;
pub mod health;
pub mod idempotency;
pub mod ingress;
pub mod json;
pub mod messages;
pub mod metering;
pub mod metrics;
pub mod openai;
pub mod pii;
pub mod pipeline;
pub mod policy;
pub mod provider;
pub mod ratelimit;
pub mod repoll;
pub mod request_id;
pub mod route;
pub mod run;
pub mod server;
pub mod standalone;
pub mod tokens;
