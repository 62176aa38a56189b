//! The coordinator: migration plans, sequenced across the agents of both clusters.

pub mod agents;
pub mod model;
pub mod scheduler;
pub mod secrets;
pub mod store;
