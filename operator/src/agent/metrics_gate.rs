//! The door of `/metrics`: asks the Kubernetes API about a scraper's token (TokenReview, then
//! SubjectAccessReview) unless a recent verdict is cached. The decisions themselves are in
//! [`super::metrics_auth`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use kube::api::{Api, PostParams};
use tokio::sync::Semaphore;
use tracing::warn;

use super::metrics_auth::{
    CachePolicy, MetricsAuth, Verdict, VerdictCache, access_review, access_verdict,
    authenticated_user, bearer_token, token_key, token_review,
};

/// What a request for `/metrics` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Granted(Verdict),
    /// The API server could not be asked (down, slow, or the agent lacks the RBAC to ask).
    Unavailable(String),
}

/// How long one check may wait for the API server: well inside Prometheus's 10 s scrape timeout.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// Reviews under way at once: requests with made-up tokens from anyone on the network wait in
/// line instead of becoming a flood of API calls.
const CONCURRENT_REVIEWS: usize = 4;

pub struct MetricsGate {
    reviewer: Option<Reviewer>,
}

struct Reviewer {
    client: kube::Client,
    /// The agent's runtime, where the client's connections live (the HTTP server has its own).
    runtime: tokio::runtime::Handle,
    cache: Mutex<VerdictCache>,
    reviews: Arc<Semaphore>,
}

impl MetricsGate {
    /// `--metrics-auth`; must be called on the agent's runtime.
    pub fn new(mode: MetricsAuth, client: &kube::Client) -> Self {
        let reviewer = match mode {
            MetricsAuth::None => None,
            MetricsAuth::Kubernetes => Some(Reviewer {
                client: client.clone(),
                runtime: tokio::runtime::Handle::current(),
                cache: Mutex::new(VerdictCache::new(CachePolicy::default())),
                reviews: Arc::new(Semaphore::new(CONCURRENT_REVIEWS)),
            }),
        };
        MetricsGate { reviewer }
    }

    /// The verdict for a request with this `Authorization` header.
    pub async fn check(&self, authorization: Option<&str>) -> Access {
        let Some(reviewer) = &self.reviewer else {
            return Access::Granted(Verdict::Allowed);
        };
        let Some(token) = bearer_token(authorization) else {
            return Access::Granted(Verdict::Unauthenticated);
        };
        let key = token_key(token);
        if let Some(verdict) = reviewer.cached(&key) {
            return Access::Granted(verdict);
        }
        let (client, reviews, token) = (
            reviewer.client.clone(),
            reviewer.reviews.clone(),
            token.to_string(),
        );
        let asked = reviewer.runtime.spawn(async move {
            let _permit = reviews.acquire_owned().await;
            tokio::time::timeout(REVIEW_TIMEOUT, review(client, &token)).await
        });
        match asked.await {
            Ok(Ok(Ok(verdict))) => {
                reviewer
                    .cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, verdict.clone(), Instant::now());
                Access::Granted(verdict)
            }
            Ok(Ok(Err(problem))) => unavailable(problem),
            Ok(Err(_elapsed)) => unavailable(format!(
                "the Kubernetes API did not answer within {REVIEW_TIMEOUT:?}"
            )),
            Err(join) => unavailable(format!("the review task failed: {join}")),
        }
    }
}

impl Reviewer {
    fn cached(&self, key: &[u8; 32]) -> Option<Verdict> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key, Instant::now())
    }
}

fn unavailable(problem: String) -> Access {
    warn!(%problem, "cannot check a /metrics scraper's token");
    Access::Unavailable(problem)
}

/// Who the token is and whether they may get /metrics; `Err` when the API server could not say.
async fn review(client: kube::Client, token: &str) -> Result<Verdict, String> {
    let params = PostParams::default();
    let answer = Api::<TokenReview>::all(client.clone())
        .create(&params, &token_review(token))
        .await
        .map_err(|e| describe("TokenReview", e))?;
    let Some(user) = authenticated_user(&answer) else {
        return Ok(Verdict::Unauthenticated);
    };
    let answer = Api::<SubjectAccessReview>::all(client)
        .create(&params, &access_review(&user))
        .await
        .map_err(|e| describe("SubjectAccessReview", e))?;
    Ok(access_verdict(&user, &answer))
}

fn describe(review: &str, error: kube::Error) -> String {
    match error {
        kube::Error::Api(status) if status.code == 403 => format!(
            "the agent may not create {review}s ({}): give its ServiceAccount the chart's RBAC \
             for agent.metrics.auth=kubernetes, or run it with --metrics-auth=none",
            status.message
        ),
        error => format!("{review} failed: {error}"),
    }
}
