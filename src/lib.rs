//! nexus-sidecar: an authenticating reverse-proxy sidecar.

pub mod standin;
