//! The generated gRPC types of `proto/ferry/v1/`, for the agent's server and for clients, and
//! the gRPC plumbing the servers and clients share (`client`, `health`).
//!
//! Only the RPC layer (`agent::service`, `agent::server`, `agent::auth` and the coordinator's
//! counterparts) imports tonic; everything below works on plain Rust types.

pub mod client;
pub mod health;

/// `ferry.v1`: messages, `AgentService` server and client.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("ferry.v1");
}

/// Makes ring rustls's process-wide crypto provider, unless one is installed already.
///
/// The dependency tree enables two providers (ring through tonic, aws-lc-rs through the object
/// store's HTTP client), and rustls then refuses to choose one itself: every TLS server or
/// client built without this would panic. Called by the servers and clients before any TLS.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing the race to another thread that installed one is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The encoded file descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ferry_descriptor");

/// The backend options a `StoreOptions` and `StoreCredentials` ask for; empty strings are
/// unset, a zero timeout is 120 seconds.
pub fn backend_options(
    o: pb::StoreOptions,
    c: pb::StoreCredentials,
) -> crate::backend::BackendOptions {
    let set = |s: String| (!s.is_empty()).then_some(s);
    crate::backend::BackendOptions {
        s3_endpoint: set(o.s3_endpoint),
        s3_region: set(o.s3_region),
        s3_path_style: o.s3_path_style,
        ca_pem: (!o.ca_pem.is_empty()).then_some(o.ca_pem),
        insecure_tls: o.insecure_tls,
        request_timeout: std::time::Duration::from_secs(match o.request_timeout_seconds {
            0 => 120,
            n => u64::from(n),
        }),
        credentials: crate::backend::StoreCredentials {
            aws_access_key_id: set(c.aws_access_key_id),
            aws_secret_access_key: set(c.aws_secret_access_key),
            aws_session_token: set(c.aws_session_token),
            azure_account_name: set(c.azure_account_name),
            azure_account_key: set(c.azure_account_key),
            google_service_account_json: set(c.google_service_account_json),
        },
        ..crate::backend::BackendOptions::default()
    }
}
