//! The decisions of `/metrics` access: header parsing, verdicts from review answers, the cache.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};
use k8s_openapi::api::authorization::v1::{SubjectAccessReview, SubjectAccessReviewStatus};

use super::metrics_auth::*;

fn prometheus() -> UserInfo {
    UserInfo {
        username: Some("system:serviceaccount:monitoring:prometheus".into()),
        uid: Some("0d4c".into()),
        groups: Some(vec![
            "system:serviceaccounts".into(),
            "system:authenticated".into(),
        ]),
        extra: Some(BTreeMap::from([(
            "authentication.kubernetes.io/pod-name".into(),
            vec!["prometheus-0".into()],
        )])),
    }
}

fn token_answer(authenticated: Option<bool>, user: Option<UserInfo>) -> TokenReview {
    TokenReview {
        status: Some(TokenReviewStatus {
            authenticated,
            user,
            ..TokenReviewStatus::default()
        }),
        ..TokenReview::default()
    }
}

fn access_answer(allowed: bool, denied: Option<bool>) -> SubjectAccessReview {
    SubjectAccessReview {
        status: Some(SubjectAccessReviewStatus {
            allowed,
            denied,
            ..SubjectAccessReviewStatus::default()
        }),
        ..SubjectAccessReview::default()
    }
}

#[test]
fn only_a_non_empty_bearer_token_is_taken() {
    assert_eq!(bearer_token(Some("Bearer abc.def")), Some("abc.def"));
    assert_eq!(bearer_token(Some("bearer  abc ")), Some("abc"));
    assert_eq!(bearer_token(Some("Basic dXNlcjpwdw==")), None);
    assert_eq!(bearer_token(Some("Bearer ")), None);
    assert_eq!(bearer_token(Some("Bearer")), None);
    assert_eq!(bearer_token(Some("abc")), None);
    assert_eq!(bearer_token(None), None);
}

#[test]
fn the_token_review_carries_the_token_for_the_api_servers_audience() {
    let review = token_review("t0k3n");
    assert_eq!(review.spec.token.as_deref(), Some("t0k3n"));
    assert_eq!(review.spec.audiences, None);
}

#[test]
fn only_an_authenticated_answer_with_a_user_names_someone() {
    let user = prometheus();
    assert_eq!(
        authenticated_user(&token_answer(Some(true), Some(user.clone()))),
        Some(user.clone())
    );
    assert_eq!(
        authenticated_user(&token_answer(Some(false), Some(user.clone()))),
        None
    );
    assert_eq!(
        authenticated_user(&token_answer(None, Some(user.clone()))),
        None
    );
    assert_eq!(authenticated_user(&token_answer(Some(true), None)), None);
    assert_eq!(
        authenticated_user(&token_answer(Some(true), Some(UserInfo::default()))),
        None,
        "no username"
    );
    assert_eq!(
        authenticated_user(&TokenReview::default()),
        None,
        "no status"
    );
}

#[test]
fn the_access_review_asks_for_get_on_metrics_as_the_whole_user() {
    let user = prometheus();
    let review = access_review(&user);
    let attributes = review.spec.non_resource_attributes.as_ref().unwrap();
    assert_eq!(attributes.path.as_deref(), Some("/metrics"));
    assert_eq!(attributes.verb.as_deref(), Some("get"));
    assert_eq!(review.spec.resource_attributes, None);
    assert_eq!(review.spec.user, user.username);
    assert_eq!(review.spec.groups, user.groups);
    assert_eq!(review.spec.uid, user.uid);
    assert_eq!(review.spec.extra, user.extra);
}

#[test]
fn access_is_allowed_only_when_the_authoriser_says_so() {
    let user = prometheus();
    let forbidden = Verdict::Forbidden {
        user: "system:serviceaccount:monitoring:prometheus".into(),
    };
    assert_eq!(
        access_verdict(&user, &access_answer(true, None)),
        Verdict::Allowed
    );
    assert_eq!(
        access_verdict(&user, &access_answer(true, Some(false))),
        Verdict::Allowed
    );
    assert_eq!(
        access_verdict(&user, &access_answer(false, None)),
        forbidden,
        "no opinion"
    );
    assert_eq!(
        access_verdict(&user, &access_answer(false, Some(true))),
        forbidden
    );
    assert_eq!(
        access_verdict(&user, &access_answer(true, Some(true))),
        forbidden,
        "contradictory: denied wins"
    );
    assert_eq!(
        access_verdict(&user, &SubjectAccessReview::default()),
        forbidden,
        "no status"
    );
}

#[test]
fn tokens_are_cached_by_digest() {
    let key = token_key("secret");
    assert_eq!(key, token_key("secret"));
    assert_ne!(key, token_key("secret2"));
    assert!(!key.windows(6).any(|w| w == b"secret"));
}

fn policy(capacity: usize) -> CachePolicy {
    CachePolicy {
        allowed_for: Duration::from_secs(60),
        denied_for: Duration::from_secs(10),
        capacity,
    }
}

#[test]
fn allowed_verdicts_live_60_s_and_refusals_10_s() {
    let mut cache = VerdictCache::new(policy(8));
    let t0 = Instant::now();
    let forbidden = Verdict::Forbidden { user: "u".into() };
    cache.insert(token_key("ok"), Verdict::Allowed, t0);
    cache.insert(token_key("nobody"), Verdict::Unauthenticated, t0);
    cache.insert(token_key("u"), forbidden.clone(), t0);

    // Scrapes every 15 s within the minute are answered from the cache.
    for s in [0, 15, 30, 45, 59] {
        let at = t0 + Duration::from_secs(s);
        assert_eq!(
            cache.get(&token_key("ok"), at),
            Some(Verdict::Allowed),
            "{s} s"
        );
    }
    assert_eq!(
        cache.get(&token_key("ok"), t0 + Duration::from_secs(60)),
        None
    );

    let at = t0 + Duration::from_secs(9);
    assert_eq!(
        cache.get(&token_key("nobody"), at),
        Some(Verdict::Unauthenticated)
    );
    assert_eq!(cache.get(&token_key("u"), at), Some(forbidden));
    let at = t0 + Duration::from_secs(10);
    assert_eq!(cache.get(&token_key("nobody"), at), None);
    assert_eq!(cache.get(&token_key("u"), at), None);
    assert_eq!(cache.get(&token_key("never seen"), t0), None);
}

#[test]
fn a_new_verdict_replaces_the_old_one() {
    let mut cache = VerdictCache::new(policy(8));
    let t0 = Instant::now();
    cache.insert(token_key("t"), Verdict::Unauthenticated, t0);
    let t1 = t0 + Duration::from_secs(11);
    cache.insert(token_key("t"), Verdict::Allowed, t1);
    assert_eq!(cache.len(), 1);
    assert_eq!(
        cache.get(&token_key("t"), t1 + Duration::from_secs(30)),
        Some(Verdict::Allowed)
    );
}

#[test]
fn the_cache_stays_within_its_capacity() {
    let mut cache = VerdictCache::new(policy(4));
    let t0 = Instant::now();
    cache.insert(token_key("prometheus"), Verdict::Allowed, t0);
    // A flood of made-up tokens, ten a second.
    for n in 0..100u64 {
        let at = t0 + Duration::from_millis(100 * n);
        cache.insert(
            token_key(&format!("made-up-{n}")),
            Verdict::Unauthenticated,
            at,
        );
        assert!(cache.len() <= 4, "{} entries after {n}", cache.len());
    }
    // The newest refusal is there; the soonest to expire went first.
    let last = t0 + Duration::from_millis(9_900);
    assert_eq!(
        cache.get(&token_key("made-up-99"), last),
        Some(Verdict::Unauthenticated)
    );
    assert_eq!(cache.get(&token_key("made-up-0"), last), None);
    assert_eq!(
        cache.get(&token_key("prometheus"), last),
        Some(Verdict::Allowed),
        "the flood did not push out the scraper that expires last"
    );
}

#[test]
fn expired_entries_make_room_before_live_ones_go() {
    let mut cache = VerdictCache::new(policy(2));
    let t0 = Instant::now();
    cache.insert(token_key("prometheus"), Verdict::Allowed, t0);
    cache.insert(token_key("stale"), Verdict::Unauthenticated, t0);
    let later = t0 + Duration::from_secs(20);
    cache.insert(token_key("new"), Verdict::Unauthenticated, later);
    assert_eq!(
        cache.get(&token_key("prometheus"), later),
        Some(Verdict::Allowed),
        "the live allowed verdict was kept; the expired refusal made room"
    );
    assert_eq!(cache.len(), 2);
}

#[test]
fn a_zero_capacity_cache_keeps_nothing() {
    let mut cache = VerdictCache::new(policy(0));
    let t0 = Instant::now();
    cache.insert(token_key("t"), Verdict::Allowed, t0);
    assert!(cache.is_empty());
    assert_eq!(cache.get(&token_key("t"), t0), None);
}
