//! skiff: a reconciling controller for container tasks, a Kubernetes-style operator
//! with no Kubernetes. See ARCHITECTURE.md for the map of modules.

pub mod api;
pub mod azure;
pub mod callback;
pub mod cli;
pub mod controller;
pub mod fsutil;
pub mod fswatch;
pub mod heartbeat;
pub mod manifest;
pub mod metrics;
pub mod notifications;
pub mod runtime;
pub mod schedule;
pub mod secrets;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod status;
pub mod store;
pub mod task;
