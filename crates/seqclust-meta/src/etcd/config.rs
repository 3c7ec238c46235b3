//! [`EtcdConfig`]: where the etcd cluster is and how patiently to talk to it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How to reach etcd. Deserializes from TOML/JSON with every field optional:
///
/// ```
/// let config: seqclust_meta::EtcdConfig = serde_json::from_str(
///     r#"{ "endpoints": ["http://10.0.0.5:2379"], "prefix": "/prod/", "timeout": 2.5 }"#,
/// ).unwrap();
/// config.validate().unwrap();
/// assert_eq!(config.timeout, std::time::Duration::from_millis(2500));
/// assert_eq!(config.retries, 6);
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// The namespace of this deployment; every key lives under it (a `/` is appended when it
    /// does not end in one), so several deployments can share one etcd.
    pub prefix: String,
    /// User name, when etcd has authentication enabled.
    pub username: Option<String>,
    /// Password of `username`. Never printed by `Debug` nor logged.
    pub password: Option<String>,
    /// Deadline of each single etcd request (and of connecting); in files a number of
    /// seconds (`timeout = 5`, `timeout = 0.5`).
    #[serde(with = "seconds")]
    pub timeout: Duration,
    /// How many times a request that failed transiently (unavailable, timed out) is tried
    /// again, with exponential backoff (50 ms doubling to 2 s), before its error is returned.
    /// The default 6 waits about 3 s in all, longer than an etcd leader election (1–2 s
    /// after a member is lost), so that a member loss is invisible.
    pub retries: u32,
    /// CA certificate (PEM) that signed the etcd members' certificates: TLS to `https://`
    /// endpoints. Every endpoint must then be `https://`.
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for etcd's `--client-cert-auth`; goes with `key`.
    pub cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of `cert`.
    pub key: Option<std::path::PathBuf>,
    /// The name in the members' certificates, when it is not the endpoints' host.
    pub tls_domain: Option<String>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            prefix: "/seqclust/".to_owned(),
            username: None,
            password: None,
            timeout: Duration::from_secs(5),
            retries: 6,
            ca: None,
            cert: None,
            key: None,
            tls_domain: None,
        }
    }
}

impl EtcdConfig {
    /// Checks the config; the error names the bad field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, reason: String| Err(Error::Config { field, reason });
        if self.endpoints.is_empty() {
            return bad(
                "endpoints",
                "at least one etcd endpoint is needed".to_owned(),
            );
        }
        for endpoint in &self.endpoints {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"))
                .unwrap_or(endpoint);
            if rest.is_empty() || rest.contains(char::is_whitespace) || rest.contains('/') {
                return bad(
                    "endpoints",
                    format!("{endpoint:?} is not of the form [http://]host:port"),
                );
            }
        }
        if self.prefix.is_empty() {
            return bad(
                "prefix",
                "must not be empty (e.g. \"/seqclust/\")".to_owned(),
            );
        }
        if self.username.is_some() != self.password.is_some() {
            let field = if self.username.is_some() {
                "password"
            } else {
                "username"
            };
            return bad(field, "username and password go together".to_owned());
        }
        if self.cert.is_some() != self.key.is_some() {
            let field = if self.cert.is_some() { "key" } else { "cert" };
            return bad(
                field,
                "a client certificate and its key go together".to_owned(),
            );
        }
        let https = self
            .endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if self.ca.is_some() && https != self.endpoints.len() {
            return bad(
                "endpoints",
                "with a ca every endpoint must be https://".to_owned(),
            );
        }
        if self.ca.is_none() && (https > 0 || self.cert.is_some() || self.tls_domain.is_some()) {
            return bad(
                "ca",
                "TLS to etcd (https:// endpoints, a client certificate) needs the CA certificate of its members".to_owned(),
            );
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be greater than zero".to_owned());
        }
        if self.retries > 100 {
            return bad("retries", format!("{} is more than 100", self.retries));
        }
        Ok(())
    }

    /// The prefix with a trailing `/`: the root of all of this deployment's keys.
    pub(crate) fn root(&self) -> String {
        if self.prefix.ends_with('/') {
            self.prefix.clone()
        } else {
            format!("{}/", self.prefix)
        }
    }
}

/// (De)serializes a [`Duration`] as a number of seconds.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs)
            .map_err(|_| D::Error::custom(format!("{secs} is not a number of seconds >= 0")))
    }
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("tls_domain", &self.tls_domain)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(config: &EtcdConfig) -> &'static str {
        match config.validate() {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn default_is_valid_and_roundtrips() {
        let config = EtcdConfig::default();
        config.validate().unwrap();
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<EtcdConfig>(&json).unwrap(), config);
        let partial: EtcdConfig = serde_json::from_str(r#"{"retries": 7}"#).unwrap();
        assert_eq!(partial.retries, 7);
        assert_eq!(partial.timeout, Duration::from_secs(5));
        let whole: EtcdConfig = serde_json::from_str(r#"{"timeout": 2}"#).unwrap();
        assert_eq!(whole.timeout, Duration::from_secs(2));
        assert!(serde_json::from_str::<EtcdConfig>(r#"{"timeout": -1}"#).is_err());
        assert!(serde_json::from_str::<EtcdConfig>(r#"{"timout": 1}"#).is_err());
    }

    #[test]
    fn validate_names_the_bad_field() {
        let ok = EtcdConfig::default();
        let no_endpoints = EtcdConfig {
            endpoints: vec![],
            ..ok.clone()
        };
        assert_eq!(field_of(&no_endpoints), "endpoints");
        let bad_url = EtcdConfig {
            endpoints: vec!["http://a b:1".into()],
            ..ok.clone()
        };
        assert_eq!(field_of(&bad_url), "endpoints");
        assert_eq!(
            field_of(&EtcdConfig {
                prefix: String::new(),
                ..ok.clone()
            }),
            "prefix"
        );
        let user_only = EtcdConfig {
            username: Some("u".into()),
            ..ok.clone()
        };
        assert_eq!(field_of(&user_only), "password");
        assert_eq!(
            field_of(&EtcdConfig {
                timeout: Duration::ZERO,
                ..ok.clone()
            }),
            "timeout"
        );
        assert_eq!(
            field_of(&EtcdConfig {
                retries: 1000,
                ..ok
            }),
            "retries"
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let config = EtcdConfig {
            username: Some("root".into()),
            password: Some("hunter2".into()),
            ..EtcdConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("root") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn root_ends_in_a_slash() {
        let c = |prefix: &str| EtcdConfig {
            prefix: prefix.into(),
            ..EtcdConfig::default()
        };
        assert_eq!(c("/a/").root(), "/a/");
        assert_eq!(c("/a").root(), "/a/");
    }
}
