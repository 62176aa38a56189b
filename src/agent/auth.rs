//! Who may call the agent: mutual TLS, a bearer token, or (explicitly, on loopback only)
//! nobody checks.
//!
//! With a client CA configured, the TLS handshake itself refuses clients without a certificate
//! signed by it, before any call is read. With a token configured, every call on every service
//! (the agent's, health and reflection) must carry `authorization: Bearer <token>`; the
//! comparison takes the same time whatever the token. Both may be configured, and then both are
//! required. This module does not log tokens, and its errors never contain them.

use std::net::SocketAddr;
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use super::{AgentError, AuthConfig, TlsConfig};

/// Refuses configurations that would let anyone in: neither a client CA nor a token without
/// `insecure`, or `insecure` on an address other hosts can reach.
pub fn check_config(auth: &AuthConfig, addr: SocketAddr) -> Result<(), AgentError> {
    let mutual = auth.tls.as_ref().is_some_and(|t| t.client_ca_pem.is_some());
    let token = auth.token.as_ref().is_some_and(|t| !t.trim().is_empty());
    if auth.token.is_some() && !token {
        return Err(AgentError::Config("the bearer token is empty".into()));
    }
    if mutual || token {
        return Ok(());
    }
    if !auth.insecure {
        return Err(AgentError::Config(
            "no authentication: give a client CA (--tls-client-ca, with --tls-cert and --tls-key) \
             or a token (--token-file); --insecure allows none, on a loopback address only"
                .into(),
        ));
    }
    if !addr.ip().is_loopback() {
        return Err(AgentError::Config(format!(
            "--insecure serves without authentication and so only on a loopback address, not {addr}"
        )));
    }
    Ok(())
}

/// tonic's TLS settings for `tls`: the server identity and, when a client CA is given,
/// required client certificates.
pub fn server_tls(tls: &TlsConfig) -> ServerTlsConfig {
    let mut config =
        ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
    if let Some(ca) = &tls.client_ca_pem {
        config = config
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(false);
    }
    config
}

/// The bearer token check, as a tonic interceptor for every service.
#[derive(Clone)]
pub struct TokenCheck {
    token: Option<Arc<[u8]>>,
}

impl TokenCheck {
    /// Checks `token` when given; lets every call through otherwise.
    pub fn new(token: Option<&str>) -> TokenCheck {
        TokenCheck {
            token: token.map(|t| Arc::from(t.trim().as_bytes())),
        }
    }

    /// Whether `header` (the `authorization` value) carries the token.
    fn accepts(&self, header: Option<&[u8]>) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        given.ct_eq(expected).into()
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        if self.accepts(header) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "missing or invalid bearer token in the authorization metadata",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_authentication_needs_insecure_on_loopback() {
        let none = AuthConfig::default();
        assert!(check_config(&none, addr("127.0.0.1:1")).is_err());
        let insecure = AuthConfig {
            insecure: true,
            ..AuthConfig::default()
        };
        assert!(check_config(&insecure, addr("127.0.0.1:1")).is_ok());
        assert!(check_config(&insecure, addr("[::1]:1")).is_ok());
        assert!(check_config(&insecure, addr("0.0.0.0:1")).is_err());
        assert!(check_config(&insecure, addr("10.1.2.3:1")).is_err());
    }

    #[test]
    fn a_token_or_a_client_ca_is_enough_anywhere() {
        let token = AuthConfig {
            token: Some("s3cret".into()),
            ..AuthConfig::default()
        };
        assert!(check_config(&token, addr("0.0.0.0:1")).is_ok());
        let empty = AuthConfig {
            token: Some(" \n".into()),
            ..AuthConfig::default()
        };
        assert!(check_config(&empty, addr("127.0.0.1:1")).is_err());
        let mtls = AuthConfig {
            tls: Some(TlsConfig {
                cert_pem: Vec::new(),
                key_pem: Vec::new(),
                client_ca_pem: Some(Vec::new()),
            }),
            ..AuthConfig::default()
        };
        assert!(check_config(&mtls, addr("0.0.0.0:1")).is_ok());
        // Server TLS alone authenticates nobody.
        let server_only = AuthConfig {
            tls: Some(TlsConfig {
                cert_pem: Vec::new(),
                key_pem: Vec::new(),
                client_ca_pem: None,
            }),
            ..AuthConfig::default()
        };
        assert!(check_config(&server_only, addr("0.0.0.0:1")).is_err());
    }

    #[test]
    fn token_check_wants_the_exact_bearer_token() {
        let check = TokenCheck::new(Some("tok\n"));
        assert!(check.accepts(Some(b"Bearer tok")));
        assert!(!check.accepts(Some(b"Bearer tok2")));
        assert!(!check.accepts(Some(b"Bearer to")));
        assert!(!check.accepts(Some(b"bearer tok")));
        assert!(!check.accepts(Some(b"tok")));
        assert!(!check.accepts(None));
        assert!(TokenCheck::new(None).accepts(None));
    }

    #[test]
    fn debug_output_hides_the_token_and_key() {
        let auth = AuthConfig {
            tls: Some(TlsConfig {
                cert_pem: b"CERT".to_vec(),
                key_pem: b"PRIVATE KEY BYTES".to_vec(),
                client_ca_pem: None,
            }),
            token: Some("very-secret-token".into()),
            insecure: false,
        };
        let shown = format!("{auth:?}");
        assert!(!shown.contains("very-secret-token"), "{shown}");
        assert!(!shown.contains("PRIVATE KEY BYTES"), "{shown}");
    }
}
