//! The generated gRPC types of `proto/ferry/v1/`, for the agent's server and for clients.
//!
//! Only the RPC layer (`agent::service`, `agent::server`, `agent::auth` and the coordinator's
//! counterparts) imports tonic; everything below works on plain Rust types.

/// `ferry.v1`: messages, `AgentService` server and client.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("ferry.v1");
}

/// The encoded file descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ferry_descriptor");
