//! Who a connection is: JWTs checked against the configured keys, and the identity they
//! carry (the user, until when, which channels).
//!
//! Keys: an HMAC secret (HS256/384/512), a public key in PEM (RSA → RS*/PS*, EC → ES*,
//! Ed25519 → EdDSA) and a JWKS (keys chosen by the token's `kid`), any of them. `aud` and
//! `iss` are checked when configured; `exp`, when present, with no leeway, because the
//! hub also closes the connection at that very moment.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, errors::ErrorKind};

use crate::config::{Config, ConfigError, pattern_matches};

/// A connection's verified identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`: the user.
    pub user: Arc<str>,
    /// The token's `exp`: when the connection is closed (4002) unless refreshed.
    pub expires_at: Option<SystemTime>,
    /// The token's `channels`: patterns the user may subscribe to (instead of `channels`).
    pub channels: Option<Vec<String>>,
    /// The token's `publish`: patterns the user may publish to (instead of
    /// `client_publish`).
    pub publish: Option<Vec<String>>,
}

impl Identity {
    /// Seconds until `exp` (0 when past), for replies.
    pub fn expires_in(&self) -> Option<u64> {
        self.expires_at.map(|at| {
            at.duration_since(SystemTime::now())
                .map_or(0, |d| d.as_secs())
        })
    }

    /// Whether the token's `channels` (or, without them, `fallback`) admit `channel`.
    pub(crate) fn may_subscribe(&self, channel: &str) -> Option<bool> {
        self.channels
            .as_ref()
            .map(|patterns| patterns.iter().any(|p| pattern_matches(p, channel)))
    }

    /// Whether the token's `publish` admits `channel` (`None`: no such claim).
    pub(crate) fn may_publish(&self, channel: &str) -> Option<bool> {
        self.publish
            .as_ref()
            .map(|patterns| patterns.iter().any(|p| pattern_matches(p, channel)))
    }
}

/// What an upgrade request showed of its identity.
#[derive(Debug)]
pub(crate) enum Auth {
    /// No authentication configured, or anonymous allowed and no token given.
    Open,
    /// A `wshub.v1` connection that must still send `connect` with its token.
    Pending,
    /// A verified token.
    User(Box<Identity>),
}

/// The token of an upgrade request: `?token=` in the query, else `Authorization: Bearer`.
pub(crate) fn token_of<'a>(
    query: Option<&'a str>,
    authorization: Option<&'a [u8]>,
) -> Option<std::borrow::Cow<'a, str>> {
    let from_query = query.and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .map(|raw| percent_encoding::percent_decode_str(raw).decode_utf8_lossy())
    });
    from_query.or_else(|| {
        authorization
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(|token| std::borrow::Cow::Borrowed(token.trim()))
    })
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Not a valid token for this hub: the reason, one line.
    Invalid(String),
    /// Valid, but its `exp` has passed.
    Expired,
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Invalid(why) => f.write_str(why),
            AuthError::Expired => f.write_str("token expired"),
        }
    }
}

/// The claims we read.
#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    exp: Option<u64>,
    channels: Option<Vec<String>>,
    publish: Option<Vec<String>>,
}

/// Which algorithms a PEM public key serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

/// `Ok(None)` for HMAC algorithms, the key family for the others, `Err` for algorithms
/// we do not take.
fn family_of(alg: Algorithm) -> Result<Option<Family>, ()> {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => Ok(None),
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Ok(Some(Family::Rsa)),
        ES256 | ES384 => Ok(Some(Family::Ec)),
        EdDSA => Ok(Some(Family::Ed)),
        _ => Err(()),
    }
}

/// Checks tokens against the configured keys.
pub(crate) struct Verifier {
    hmac: Option<DecodingKey>,
    public: Option<(DecodingKey, Family)>,
    jwks: Option<JwkSet>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    /// The verifier the config asks for: `None` when no JWT key is set (no
    /// authentication, as before).
    pub(crate) fn from_config(config: &Config) -> Result<Option<Verifier>, ConfigError> {
        let err = |key: &'static str, reason: String| ConfigError { key, reason };
        let hmac = match &config.jwt_hmac_secret {
            Some(secret) if secret.len() < 16 => {
                return Err(err(
                    "jwt_hmac_secret",
                    "at least 16 bytes (32 or more recommended)".into(),
                ));
            }
            Some(secret) => Some(
                DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| err("jwt_hmac_secret", e.to_string()))?,
            ),
            None => None,
        };
        let public = match &config.jwt_public_key_pem {
            Some(pem) => {
                let pem = pem.as_bytes();
                let key = DecodingKey::from_rsa_pem(pem)
                    .map(|k| (k, Family::Rsa))
                    .or_else(|_| DecodingKey::from_ec_pem(pem).map(|k| (k, Family::Ec)))
                    .or_else(|_| DecodingKey::from_ed_pem(pem).map(|k| (k, Family::Ed)))
                    .map_err(|_| {
                        err(
                            "jwt_public_key",
                            "not a PEM public key (RSA, EC P-256/P-384 or Ed25519)".into(),
                        )
                    })?;
                Some(key)
            }
            None => None,
        };
        let jwks = match &config.jwt_jwks {
            Some(text) => {
                let set: JwkSet = serde_json::from_str(text)
                    .map_err(|e| err("jwt_jwks_file", format!("not a JWKS document: {e}")))?;
                for jwk in &set.keys {
                    DecodingKey::from_jwk(jwk)
                        .map_err(|e| err("jwt_jwks_file", format!("a key cannot be used: {e}")))?;
                }
                Some(set)
            }
            None => None,
        };
        if hmac.is_none() && public.is_none() && jwks.is_none() {
            return Ok(None);
        }
        Ok(Some(Verifier {
            hmac,
            public,
            jwks,
            audience: config.jwt_audience.clone(),
            issuer: config.jwt_issuer.clone(),
        }))
    }

    /// The identity in `token`, or why not.
    pub(crate) fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let invalid = |why: &str| AuthError::Invalid(why.to_owned());
        let header = decode_header(token).map_err(|_| invalid("not a JWT"))?;
        let family = family_of(header.alg).map_err(|()| invalid("algorithm not accepted"))?;
        let key = match (family, &header.kid, &self.jwks) {
            (None, _, _) => self
                .hmac
                .clone()
                .ok_or_else(|| invalid("HMAC tokens are not accepted here"))?,
            (Some(_), Some(kid), Some(set)) => {
                let jwk = set
                    .find(kid)
                    .ok_or_else(|| AuthError::Invalid(format!("no key with kid `{kid}`")))?;
                DecodingKey::from_jwk(jwk).map_err(|_| invalid("unusable key"))?
            }
            (Some(family), _, _) => match &self.public {
                Some((key, have)) if *have == family => key.clone(),
                _ => {
                    return Err(AuthError::Invalid(format!(
                        "no key for {:?} tokens",
                        header.alg
                    )));
                }
            },
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = 0;
        // `aud` and `iss` must be present when they are checked: jsonwebtoken only
        // compares the claims a token has.
        let mut required = vec!["sub"];
        if self.audience.is_some() {
            required.push("aud");
        }
        if self.issuer.is_some() {
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        let data = decode::<Claims>(token, &key, &validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::InvalidSignature => invalid("bad signature"),
            ErrorKind::InvalidAudience => invalid("wrong audience (aud)"),
            ErrorKind::InvalidIssuer => invalid("wrong issuer (iss)"),
            ErrorKind::ImmatureSignature => invalid("not valid yet (nbf)"),
            ErrorKind::MissingRequiredClaim(claim) => {
                AuthError::Invalid(format!("missing claim `{claim}`"))
            }
            ErrorKind::InvalidAlgorithm => invalid("algorithm not accepted"),
            _ => AuthError::Invalid(format!("invalid token: {e}")),
        })?;
        let claims = data.claims;
        let expires_at = claims.exp.map(|exp| UNIX_EPOCH + Duration::from_secs(exp));
        if expires_at.is_some_and(|at| at <= SystemTime::now()) {
            return Err(AuthError::Expired);
        }
        if claims.sub.is_empty() {
            return Err(invalid("empty `sub`"));
        }
        Ok(Identity {
            user: claims.sub.into(),
            expires_at,
            channels: claims.channels,
            publish: claims.publish,
        })
    }
}
