//! Building the `object_store` store for a [`Location`], with credentials and settings from
//! the environment restic users already have and from command-line options.
//!
//! S3 reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` and
//! `AWS_DEFAULT_REGION`/`AWS_REGION` (and everything else `object_store` reads from the
//! environment); GCS reads `GOOGLE_APPLICATION_CREDENTIALS`; Azure reads `AZURE_ACCOUNT_NAME`
//! and `AZURE_ACCOUNT_KEY` (restic's names) as well as `object_store`'s own. The stores' own
//! retries are turned off: [`super::retry`] retries every request, so that each retry is
//! logged with its object key and the bound is one number.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use super::BackendError;
use super::retry::RetryPolicy;
use crate::location::Location;

/// Settings for network stores; local directories ignore them.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    /// S3 endpoint overriding the location's (`https://host:port`).
    pub s3_endpoint: Option<String>,
    /// S3 region; default `AWS_DEFAULT_REGION`, `AWS_REGION`, else `us-east-1`.
    pub s3_region: Option<String>,
    /// Force path-style S3 requests (`host/bucket/key`). By default AWS gets virtual-hosted
    /// requests and other endpoints (MinIO, Ceph RGW, NooBaa) path-style ones.
    pub s3_path_style: bool,
    /// A PEM file of CA certificates to trust in addition to the system's.
    pub ca_bundle: Option<PathBuf>,
    /// PEM CA certificates to trust, given as bytes (the agent receives them in requests).
    pub ca_pem: Option<Vec<u8>>,
    /// Accept any TLS certificate (lab stores with self-signed certificates only).
    pub insecure_tls: bool,
    /// The longest one request may take.
    pub request_timeout: Duration,
    /// Retries of failed requests to network stores.
    pub retry: RetryPolicy,
    /// Credentials given explicitly; when set for a store, that store's builder starts empty
    /// instead of from the environment, so they are never mixed with the process's own.
    pub credentials: StoreCredentials,
}

/// Object store credentials passed explicitly instead of through the environment. `Debug`
/// shows which are set, never their values.
#[derive(Clone, Default)]
pub struct StoreCredentials {
    /// S3 access key id.
    pub aws_access_key_id: Option<String>,
    /// S3 secret access key.
    pub aws_secret_access_key: Option<String>,
    /// S3 session token.
    pub aws_session_token: Option<String>,
    /// Azure storage account name.
    pub azure_account_name: Option<String>,
    /// Azure storage account key.
    pub azure_account_key: Option<String>,
    /// A GCS service account key as JSON.
    pub google_service_account_json: Option<String>,
}

impl StoreCredentials {
    fn aws(&self) -> bool {
        self.aws_access_key_id.is_some() || self.aws_secret_access_key.is_some()
    }

    fn azure(&self) -> bool {
        self.azure_account_name.is_some() || self.azure_account_key.is_some()
    }
}

impl std::fmt::Debug for StoreCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("StoreCredentials")
            .field("aws_access_key_id", &set(&self.aws_access_key_id))
            .field("aws_secret_access_key", &set(&self.aws_secret_access_key))
            .field("aws_session_token", &set(&self.aws_session_token))
            .field("azure_account_name", &set(&self.azure_account_name))
            .field("azure_account_key", &set(&self.azure_account_key))
            .field(
                "google_service_account_json",
                &set(&self.google_service_account_json),
            )
            .finish()
    }
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            s3_endpoint: None,
            s3_region: None,
            s3_path_style: false,
            ca_bundle: None,
            ca_pem: None,
            insecure_tls: false,
            request_timeout: Duration::from_secs(120),
            retry: RetryPolicy::NETWORK,
            credentials: StoreCredentials::default(),
        }
    }
}

fn client_options(opts: &BackendOptions, location: &str) -> Result<ClientOptions, BackendError> {
    let mut c = ClientOptions::new()
        .with_timeout(opts.request_timeout)
        .with_connect_timeout(Duration::from_secs(10).min(opts.request_timeout))
        .with_allow_invalid_certificates(opts.insecure_tls);
    let mut bundles = Vec::new();
    if let Some(path) = &opts.ca_bundle {
        let pem = std::fs::read(path).map_err(|source| BackendError::Config {
            location: location.to_string(),
            reason: format!("read CA bundle {}: {source}", path.display()),
        })?;
        bundles.push((format!("CA bundle {}", path.display()), pem));
    }
    if let Some(pem) = &opts.ca_pem {
        bundles.push(("the CA certificates given".to_string(), pem.clone()));
    }
    for (what, pem) in bundles {
        let certs =
            object_store::Certificate::from_pem_bundle(&pem).map_err(|e| BackendError::Config {
                location: location.to_string(),
                reason: format!("parse {what}: {e}"),
            })?;
        for cert in certs {
            c = c.with_root_certificate(cert);
        }
    }
    Ok(c)
}

/// The stores' own retry loop is disabled; ours wraps every request.
fn no_retries() -> RetryConfig {
    RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    }
}

/// Builds the store for a network location; returns it with the key prefix to use.
pub fn network_store(
    location: &Location,
    opts: &BackendOptions,
) -> Result<(Arc<dyn ObjectStore>, String), BackendError> {
    let shown = location.to_string();
    let config_err = |e: object_store::Error| BackendError::Config {
        location: shown.clone(),
        reason: e.to_string(),
    };
    match location {
        Location::S3 {
            endpoint,
            bucket,
            prefix,
        } => {
            let creds = &opts.credentials;
            let start = if creds.aws() {
                let mut b = AmazonS3Builder::new();
                if let Some(v) = &creds.aws_access_key_id {
                    b = b.with_access_key_id(v);
                }
                if let Some(v) = &creds.aws_secret_access_key {
                    b = b.with_secret_access_key(v);
                }
                if let Some(v) = &creds.aws_session_token {
                    b = b.with_token(v);
                }
                b
            } else {
                AmazonS3Builder::from_env()
            };
            let mut b = start
                .with_bucket_name(bucket)
                .with_retry(no_retries())
                .with_client_options(client_options(opts, &shown)?);
            let region = opts
                .s3_region
                .clone()
                .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                .or_else(|| std::env::var("AWS_REGION").ok())
                .unwrap_or_else(|| "us-east-1".to_string());
            b = b.with_region(region);
            let endpoint = opts.s3_endpoint.clone().or_else(|| endpoint.clone());
            match endpoint {
                Some(e) => {
                    b = b
                        .with_allow_http(e.starts_with("http://"))
                        .with_endpoint(e)
                        .with_virtual_hosted_style_request(false);
                }
                None => {
                    b = b.with_virtual_hosted_style_request(!opts.s3_path_style);
                }
            }
            let store = b.build().map_err(config_err)?;
            Ok((Arc::new(store), prefix.clone()))
        }
        Location::Gcs { bucket, prefix } => {
            let key = &opts.credentials.google_service_account_json;
            let start = match key {
                Some(json) => GoogleCloudStorageBuilder::new().with_service_account_key(json),
                None => GoogleCloudStorageBuilder::from_env(),
            };
            let mut b = start
                .with_bucket_name(bucket)
                .with_retry(no_retries())
                .with_client_options(client_options(opts, &shown)?);
            if key.is_none()
                && let Ok(path) = std::env::var("GOOGLE_APPLICATION_CREDENTIALS")
            {
                b = b.with_application_credentials(path);
            }
            let store = b.build().map_err(config_err)?;
            Ok((Arc::new(store), prefix.clone()))
        }
        Location::Azure { container, prefix } => {
            let creds = &opts.credentials;
            let explicit = creds.azure();
            let start = if explicit {
                let mut b = MicrosoftAzureBuilder::new();
                if let Some(v) = &creds.azure_account_name {
                    b = b.with_account(v);
                }
                if let Some(v) = &creds.azure_account_key {
                    b = b.with_access_key(v);
                }
                b
            } else {
                MicrosoftAzureBuilder::from_env()
            };
            let mut b = start
                .with_container_name(container)
                .with_retry(no_retries())
                .with_client_options(client_options(opts, &shown)?);
            if !explicit {
                if let Ok(name) = std::env::var("AZURE_ACCOUNT_NAME") {
                    b = b.with_account(name);
                }
                if let Ok(key) = std::env::var("AZURE_ACCOUNT_KEY") {
                    b = b.with_access_key(key);
                }
            }
            let store = b.build().map_err(config_err)?;
            Ok((Arc::new(store), prefix.clone()))
        }
        Location::Local(_) | Location::Memory => Err(BackendError::Config {
            location: shown.clone(),
            reason: "not a network location".into(),
        }),
    }
}
