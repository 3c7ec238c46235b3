//! Transport security and authentication of seqclust's gRPC services: TLS (rustls) on every
//! listener, optional mutual TLS between coordinator and workers, and bearer tokens.
//!
//! The coordinator serves JobService and WorkerService on one port. With `[tls]` it speaks
//! TLS only; with `tls.require_client_cert` a WorkerService call must come over a connection
//! whose client certificate the `tls.ca` bundle signed (job clients connect without one). With
//! `[auth] tokens_file`, every call of both services needs `authorization: Bearer <token>` for
//! one of the file's tokens; anything else is `Unauthenticated` and changes nothing. Tokens
//! are kept only as SHA-256 digests and never printed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// What can be wrong with the security settings.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A setting is inconsistent; the message names it.
    #[error("invalid config field {field}: {message}")]
    Config {
        /// The field (`tls.key`).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A certificate, key or token file cannot be read.
    #[error("cannot read {field} {path}: {source}")]
    Read {
        /// The field naming the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// tonic refused the TLS material (a bad PEM file, a bad URL).
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// Results of this module.
pub type Result<T, E = SecurityError> = std::result::Result<T, E>;

/// The `[tls]` table of the service config (and the TLS flags of the job clients).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate (chain) of this process: the coordinator's server certificate, or a
    /// worker's client certificate for mutual TLS.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM CA bundle. Clients verify the coordinator's certificate against it; with
    /// `require_client_cert` the coordinator verifies workers' certificates against it.
    pub ca: Option<PathBuf>,
    /// Mutual TLS: WorkerService calls must present a client certificate signed by `ca`.
    pub require_client_cert: bool,
    /// The name clients expect in the coordinator's certificate (default: the URL's host).
    pub domain: String,
}

/// Installs rustls' ring provider as the process default (once; a provider installed earlier
/// stays). The build also links aws-lc-rs through other crates, and with two providers rustls
/// will not choose one by itself.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| SecurityError::Read {
        field,
        path: path.to_path_buf(),
        source,
    })
}

impl TlsConfig {
    /// Checks the combination of settings; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(SecurityError::Config {
                field: "tls.key",
                message: "tls.cert and tls.key go together".into(),
            });
        }
        if self.require_client_cert && self.ca.is_none() {
            return Err(SecurityError::Config {
                field: "tls.require_client_cert",
                message: "needs tls.ca, the CA that signs the workers' certificates".into(),
            });
        }
        Ok(())
    }

    /// The server side (coordinator, serve): `None` without a certificate.
    pub fn server(&self) -> Result<Option<ServerTlsConfig>> {
        self.validate()?;
        install_crypto_provider();
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            if self.require_client_cert {
                return Err(SecurityError::Config {
                    field: "tls.cert",
                    message: "mutual TLS needs the server's own certificate".into(),
                });
            }
            return Ok(None);
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
            read("tls.cert", cert)?,
            read("tls.key", key)?,
        ));
        if self.require_client_cert
            && let Some(ca) = &self.ca
        {
            // job clients connect without a certificate; WorkerService checks for one
            tls = tls
                .client_ca_root(Certificate::from_pem(read("tls.ca", ca)?))
                .client_auth_optional(true);
        }
        Ok(Some(tls))
    }

    /// The client side (worker, job clients) for the coordinator at `url`: `None` for a plain
    /// `http://` URL without a CA, TLS for `https://`.
    pub fn client(&self, url: &str) -> Result<Option<ClientTlsConfig>> {
        self.validate()?;
        install_crypto_provider();
        let https = url.starts_with("https://");
        if !https {
            if self.ca.is_some() {
                return Err(SecurityError::Config {
                    field: "tls.ca",
                    message: format!("set, but the coordinator URL {url:?} is not https://"),
                });
            }
            return Ok(None);
        }
        let Some(ca) = &self.ca else {
            return Err(SecurityError::Config {
                field: "tls.ca",
                message: format!("{url:?} is https://: give the CA that signed its certificate"),
            });
        };
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("tls.ca", ca)?));
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls.identity(Identity::from_pem(
                read("tls.cert", cert)?,
                read("tls.key", key)?,
            ));
        }
        if !self.domain.is_empty() {
            tls = tls.domain_name(self.domain.clone());
        }
        Ok(Some(tls))
    }

    /// An endpoint for `url` with this TLS setting applied.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint> {
        let ep = Endpoint::from_shared(url.to_string())
            .map_err(|e| SecurityError::Tls(format!("coordinator address {url:?}: {e}")))?;
        match self.client(url)? {
            Some(tls) => ep
                .tls_config(tls)
                .map_err(|e| SecurityError::Tls(e.to_string())),
            None => Ok(ep),
        }
    }
}

/// The `[auth]` table: bearer tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Coordinator: the tokens it accepts, one per line (`#` comments); unset: no
    /// authentication. Workers and job clients send the file's first token.
    pub tokens_file: Option<PathBuf>,
}

impl AuthConfig {
    /// The accepted tokens (the coordinator's side).
    pub fn tokens(&self) -> Result<Tokens> {
        match &self.tokens_file {
            None => Ok(Tokens::default()),
            Some(p) => {
                let text = String::from_utf8_lossy(&read("auth.tokens_file", p)?).into_owned();
                let t = Tokens::parse(&text);
                if t.is_empty() {
                    return Err(SecurityError::Config {
                        field: "auth.tokens_file",
                        message: format!("{} holds no token", p.display()),
                    });
                }
                Ok(t)
            }
        }
    }

    /// The token this process presents (the file's first), if any.
    pub fn own_token(&self) -> Result<Option<String>> {
        match &self.tokens_file {
            None => Ok(None),
            Some(p) => {
                let text = String::from_utf8_lossy(&read("auth.tokens_file", p)?).into_owned();
                Ok(token_lines(&text).next().map(str::to_string))
            }
        }
    }
}

fn token_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The bearer tokens a server accepts, as SHA-256 digests. Empty: no authentication.
#[derive(Clone, Default)]
pub struct Tokens(Arc<HashSet<[u8; 32]>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} accepted)", self.0.len())
    }
}

impl Tokens {
    /// Tokens one per line; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Tokens {
        Tokens(Arc::new(token_lines(text).map(digest).collect()))
    }

    /// Whether authentication is off.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when authentication is off or the request carries an accepted bearer token.
    pub fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if self.0.is_empty() {
            return Ok(());
        }
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("a bearer token is required"))?;
        if self.0.contains(&digest(token.trim())) {
            Ok(())
        } else {
            Err(Status::unauthenticated("the bearer token is not accepted"))
        }
    }
}

/// The server-side checks as a tonic interceptor: the bearer token (when tokens are set) and,
/// with `client_cert`, a verified client certificate on the connection.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Accepted tokens (empty: none needed).
    pub tokens: Tokens,
    /// Whether the connection must have presented a client certificate.
    pub client_cert: bool,
}

impl Interceptor for Guard {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        check_client_cert(self.client_cert, &req)?;
        self.tokens.check(&req)?;
        Ok(req)
    }
}

/// A client interceptor that sends `authorization: Bearer <token>` (or nothing).
#[derive(Clone, Default, PartialEq)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "BearerToken(set)"
        } else {
            "BearerToken(none)"
        })
    }
}

impl BearerToken {
    /// Sends `token` (none: no header).
    pub fn new(token: Option<&str>) -> Result<BearerToken> {
        match token {
            None => Ok(BearerToken(None)),
            Some(t) => format!("Bearer {}", t.trim())
                .parse()
                .map(|v| BearerToken(Some(v)))
                .map_err(|_| SecurityError::Config {
                    field: "auth.tokens_file",
                    message: "a token must be printable ASCII".into(),
                }),
        }
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// With mutual TLS required: `Ok` only for a connection that presented a client certificate
/// (rustls has verified it against `tls.ca` during the handshake).
pub fn check_client_cert<T>(required: bool, req: &Request<T>) -> Result<(), Status> {
    if !required {
        return Ok(());
    }
    match req.peer_certs() {
        Some(c) if !c.is_empty() => Ok(()),
        _ => Err(Status::unauthenticated(
            "this service needs a client certificate (tls.require_client_cert)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_never_printed() {
        let t = Tokens::parse("# ops\n s3cret \n\nother\n");
        assert!(!t.is_empty());
        assert!(!format!("{t:?}").contains("s3cret"));
        let mut ok = Request::new(());
        ok.metadata_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        t.check(&ok).unwrap();
        let mut bad = Request::new(());
        bad.metadata_mut()
            .insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(
            t.check(&bad).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            t.check(&Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        Tokens::default().check(&Request::new(())).unwrap();
        assert!(!format!("{:?}", BearerToken::new(Some("s3cret")).unwrap()).contains("s3cret"));
    }

    #[test]
    fn inconsistent_tls_settings_name_the_field() {
        let only_cert = TlsConfig {
            cert: Some("c.pem".into()),
            ..TlsConfig::default()
        };
        assert!(
            only_cert
                .validate()
                .unwrap_err()
                .to_string()
                .contains("tls.key")
        );
        let mtls_no_ca = TlsConfig {
            require_client_cert: true,
            ..TlsConfig::default()
        };
        assert!(
            mtls_no_ca
                .validate()
                .unwrap_err()
                .to_string()
                .contains("tls.require_client_cert")
        );
        let https_no_ca = TlsConfig::default().client("https://c:7070");
        assert!(https_no_ca.unwrap_err().to_string().contains("tls.ca"));
        assert!(
            TlsConfig::default()
                .client("http://c:7070")
                .unwrap()
                .is_none()
        );
        let missing = TlsConfig {
            cert: Some("/nonexistent/c.pem".into()),
            key: Some("/nonexistent/k.pem".into()),
            ..TlsConfig::default()
        };
        let e = missing.server().unwrap_err().to_string();
        assert!(
            e.contains("tls.cert") && e.contains("/nonexistent/c.pem"),
            "{e}"
        );
    }
}
