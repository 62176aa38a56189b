//! Opening a gRPC channel to a ferry server (an agent or the coordinator) with the caller's
//! credentials: TLS with a CA of the caller's choice, an optional client certificate for mutual
//! TLS, and an optional bearer token sent on every call.
//!
//! The coordinator uses it towards agents, agents use it to register with the coordinator, and
//! `ferry plan` uses it towards the coordinator. It owns no retry policy: callers decide.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

/// How long to wait for a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A caller's credentials towards one kind of server.
#[derive(Clone, Default)]
pub struct ClientAuth {
    /// CA certificates that sign the servers' certificates (PEM); set means TLS.
    pub ca_pem: Option<Vec<u8>>,
    /// The caller's client certificate and key (PEM), for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The servers' bearer token.
    pub token: Option<String>,
    /// The name to expect in the servers' certificates instead of the endpoint's host.
    pub tls_domain: Option<String>,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("tls", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("tls_domain", &self.tls_domain)
            .finish()
    }
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

impl BearerToken {
    /// Sends `value` (`Bearer <token>`) as `authorization`, or nothing.
    pub fn new(value: Option<MetadataValue<Ascii>>) -> BearerToken {
        BearerToken(value)
    }

    /// The interceptor for `token` (the bare token, without `Bearer `), or none.
    ///
    /// Fails, without echoing the token, when it is not valid header text.
    pub fn for_token(token: Option<&str>) -> Result<BearerToken, String> {
        match token {
            None => Ok(BearerToken(None)),
            Some(t) => format!("Bearer {t}")
                .parse()
                .map(|v| BearerToken(Some(v)))
                .map_err(|_| "the bearer token is not valid header text".to_string()),
        }
    }
}

/// Opens a channel to `url` (`http://host:port` or `https://host:port`) with `auth`, and the
/// interceptor that adds its token.
///
/// With a CA in `auth`, the connection is TLS whatever the scheme. The error names what failed
/// (the address, the TLS settings or the connection) and never holds key or token material.
pub async fn connect(url: &str, auth: &ClientAuth) -> Result<(Channel, BearerToken), String> {
    super::install_crypto_provider();
    let mut ep = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("address {url:?}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if let Some(ca) = &auth.ca_pem {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = &auth.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &auth.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        ep = ep
            .tls_config(tls)
            .map_err(|e| format!("TLS settings: {}", error_chain(&e)))?;
    }
    let channel = ep.connect().await.map_err(|e| error_chain(&e))?;
    let token = BearerToken::for_token(auth.token.as_deref())?;
    Ok((channel, token))
}

/// An error and its sources on one line, each source once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s = format!("{s}: {t}");
        }
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_token_and_keys() {
        let auth = ClientAuth {
            ca_pem: Some(b"ca".to_vec()),
            identity: Some((b"cert".to_vec(), b"very-secret-key".to_vec())),
            token: Some("very-secret-token".into()),
            tls_domain: Some("ferry-agent".into()),
        };
        let shown = format!("{auth:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("ferry-agent"), "{shown}");
    }

    #[test]
    fn a_token_that_is_not_header_text_is_refused_without_echoing_it() {
        let err = BearerToken::for_token(Some("bad\ntoken-123"))
            .err()
            .unwrap();
        assert!(!err.contains("token-123"), "{err}");
        assert!(BearerToken::for_token(Some("abc")).is_ok());
        assert!(BearerToken::for_token(None).is_ok());
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_cause() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = connect(&format!("http://{addr}"), &ClientAuth::default())
            .await
            .err()
            .unwrap();
        assert!(err.to_lowercase().contains("refused"), "{err}");
        let err = connect("not a url", &ClientAuth::default())
            .await
            .err()
            .unwrap();
        assert!(err.starts_with("address \"not a url\""), "{err}");
    }
}
