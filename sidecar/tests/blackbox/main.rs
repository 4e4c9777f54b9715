//! Black-box tests: the real sidecar on loopback, driven over HTTP, in
//! front of the in-process mock provider and the `sluice-tests` mock
//! upstreams.

mod binary;
mod governance;
mod harness;
mod providers;
mod python;
mod routing;
mod standalone_mock;
mod upstream;
