//! Who may read the agent's `/metrics`, the pure part: the bearer token of a request, the
//! verdict from the API server's TokenReview and SubjectAccessReview answers, and a small cache of
//! verdicts per token so that a scrape every 15 s costs no API call.
//!
//! The agent runs on the host network, where a NetworkPolicy does not apply: the endpoint itself
//! has to tell scrapers apart, the way kube-rbac-proxy and controller-runtime's metrics filter do
//! (docs/metrics.md "Who may scrape").

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use sha2::{Digest, Sha256};

/// How `/metrics` is protected (`--metrics-auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsAuth {
    /// A bearer token that the Kubernetes API authenticates (TokenReview) and authorises for
    /// `get` on the non-resource URL `/metrics` (SubjectAccessReview).
    Kubernetes,
    /// Anyone who reaches the port.
    None,
}

/// The path and verb a scraper must be allowed (RBAC `nonResourceURLs: ["/metrics"]`, `get`).
pub const METRICS_PATH: &str = "/metrics";
pub const METRICS_VERB: &str = "get";

/// What the API server said about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No token, or one the API server does not know (expired, revoked, forged).
    Unauthenticated,
    /// A known identity without the right to get `/metrics`.
    Forbidden {
        user: String,
    },
}

/// The token of an `Authorization: Bearer <token>` header; `None` for anything else.
pub fn bearer_token(header: Option<&str>) -> Option<&str> {
    let (scheme, token) = header?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The TokenReview that asks the API server who `token` is (for the API server's own audience,
/// the audience of ServiceAccount tokens that Prometheus mounts).
pub fn token_review(token: &str) -> TokenReview {
    TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: None,
        },
        ..TokenReview::default()
    }
}

/// The user a TokenReview answer authenticated, if it did.
pub fn authenticated_user(review: &TokenReview) -> Option<UserInfo> {
    let status = review.status.as_ref()?;
    if status.authenticated != Some(true) {
        return None;
    }
    status.user.clone().filter(|user| user.username.is_some())
}

/// The SubjectAccessReview that asks whether `user` may get `/metrics`.
pub fn access_review(user: &UserInfo) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            groups: user.groups.clone(),
            uid: user.uid.clone(),
            extra: user.extra.clone(),
            non_resource_attributes: Some(NonResourceAttributes {
                path: Some(METRICS_PATH.into()),
                verb: Some(METRICS_VERB.into()),
            }),
            resource_attributes: None,
        },
        ..SubjectAccessReview::default()
    }
}

/// The verdict for `user` from the SubjectAccessReview answer: allowed only when the authoriser
/// said so (no opinion or an explicit denial both forbid).
pub fn access_verdict(user: &UserInfo, review: &SubjectAccessReview) -> Verdict {
    let allowed = review
        .status
        .as_ref()
        .is_some_and(|status| status.allowed && status.denied != Some(true));
    if allowed {
        Verdict::Allowed
    } else {
        Verdict::Forbidden {
            user: user.username.clone().unwrap_or_default(),
        }
    }
}

/// A token's cache key: its SHA-256, so that the cache holds no usable token.
pub type TokenKey = [u8; 32];

pub fn token_key(token: &str) -> TokenKey {
    Sha256::digest(token.as_bytes()).into()
}

/// How long verdicts are kept and how many.
#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    /// An allowed scraper is asked about again after this long (a removed RoleBinding or a
    /// revoked token takes effect within it).
    pub allowed_for: Duration,
    /// A refused token, shorter: a binding just created works soon.
    pub denied_for: Duration,
    /// Entries at most: random tokens from anyone on the network must not grow memory.
    pub capacity: usize,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            allowed_for: Duration::from_secs(60),
            denied_for: Duration::from_secs(10),
            capacity: 1024,
        }
    }
}

/// Verdicts per token until they expire. Errors (API server unreachable) are never cached.
#[derive(Debug)]
pub struct VerdictCache {
    policy: CachePolicy,
    entries: HashMap<TokenKey, (Verdict, Instant)>,
}

impl VerdictCache {
    pub fn new(policy: CachePolicy) -> Self {
        VerdictCache {
            policy,
            entries: HashMap::new(),
        }
    }

    pub fn get(&self, key: &TokenKey, now: Instant) -> Option<Verdict> {
        self.entries
            .get(key)
            .filter(|(_, expires)| now < *expires)
            .map(|(verdict, _)| verdict.clone())
    }

    pub fn insert(&mut self, key: TokenKey, verdict: Verdict, now: Instant) {
        if self.policy.capacity == 0 {
            return;
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= self.policy.capacity {
            self.entries.retain(|_, (_, expires)| now < *expires);
            if self.entries.len() >= self.policy.capacity {
                // Full of live entries: the one that would expire first goes.
                if let Some(soonest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(key, _)| *key)
                {
                    self.entries.remove(&soonest);
                }
            }
        }
        let ttl = match verdict {
            Verdict::Allowed => self.policy.allowed_for,
            Verdict::Unauthenticated | Verdict::Forbidden { .. } => self.policy.denied_for,
        };
        self.entries.insert(key, (verdict, now + ttl));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
