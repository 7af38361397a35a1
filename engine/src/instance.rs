//! Who owns a link: one dhcpmanager instance, named by an id that stays the same across its
//! restarts, so that a restarted instance adopts and cleans up its own links and never anybody
//! else's (another standalone apiserver, an agent, a `lease --hold` on the same host).
//!
//! Where each front end takes its id from (see docs/engine.md, "Who owns a link"):
//! - the standalone apiserver: a random id kept in its `state-dir` ([`crate::state_dir`]), so two
//!   instances with different state directories never share one, even at the same path inside
//!   two containers;
//! - the agent: its node name (one agent per node);
//! - `lease`: the MAC it leases for (one link per MAC and parent can exist at a time anyway).

use std::fmt;

use sha2::{Digest, Sha256};

use crate::error::Error;

/// The id of one instance: 1 to [`InstanceId::MAX_LEN`] bytes of ASCII letters, digits, `.`, `_`
/// and `-` (no `:`, which separates it from the address key in a link alias).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceId(String);

impl InstanceId {
    pub const MAX_LEN: usize = 64;

    /// Checks `text` and takes it as an id.
    pub fn new(text: &str) -> Result<Self, Error> {
        if is_valid(text) {
            Ok(InstanceId(text.to_owned()))
        } else {
            Err(Error::InstanceId(format!(
                "{text:?}: an instance id is 1 to {} ASCII letters, digits, '.', '_' or '-'",
                Self::MAX_LEN
            )))
        }
    }

    /// `<kind>-<name>` when that is a valid id, else `<kind>-` and 12 hex digits of the SHA-256 of
    /// `name`: the same name always gives the same id.
    pub fn derived(kind: &str, name: &str) -> Self {
        let readable = format!("{kind}-{name}");
        if is_valid(&readable) {
            return InstanceId(readable);
        }
        let digest = Sha256::digest(name.as_bytes());
        let hashed = format!("{kind}-{}", hex::encode(&digest[..6]));
        debug_assert!(is_valid(&hashed), "kinds are short and plain");
        InstanceId(hashed)
    }

    /// A fresh random id `<kind>-` + 16 hex digits (for an instance that keeps it on disk).
    pub fn random(kind: &str) -> Self {
        InstanceId(format!("{kind}-{:016x}", rand::random::<u64>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_valid(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= InstanceId::MAX_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_stay_readable_and_others_are_hashed_stably() {
        assert_eq!(
            InstanceId::derived("agent", "node-1").as_str(),
            "agent-node-1"
        );
        let long = "n".repeat(80);
        let hashed = InstanceId::derived("agent", &long);
        assert_eq!(hashed, InstanceId::derived("agent", &long));
        assert_eq!(hashed.as_str().len(), "agent-".len() + 12);
        let odd = InstanceId::derived("lease", "a:b/c");
        assert!(odd.as_str().starts_with("lease-"));
        assert!(!odd.as_str().contains(':'));
        assert_ne!(odd, InstanceId::derived("lease", "a:b/d"));
    }

    #[test]
    fn ids_with_separators_or_nothing_are_refused() {
        assert!(InstanceId::new("standalone-0123").is_ok());
        for bad in ["", "a:b", "a b", "a/b", &"x".repeat(65)] {
            assert!(InstanceId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn random_ids_are_valid_and_differ() {
        let a = InstanceId::random("standalone");
        assert!(InstanceId::new(a.as_str()).is_ok());
        assert_ne!(a, InstanceId::random("standalone"));
    }
}
