//! The MAC address value of the API.
//!
//! Stand-in with the same shape as `dhcpmanager_operator::dhcp::MacAddr` (FromStr, Display, serde as
//! `aa:bb:cc:dd:ee:ff`), which the operator crate does not export yet; swap the `pub use` in `lib.rs`
//! for the operator's type once it does.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {input:?}: expected six hex pairs separated by ':' or '-'")]
pub struct InvalidMac {
    pub input: String,
}

impl FromStr for MacAddr {
    type Err = InvalidMac;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidMac {
            input: input.to_string(),
        };
        let bytes = input.as_bytes();
        if bytes.len() != 17 || (bytes[2] != b':' && bytes[2] != b'-') {
            return Err(invalid());
        }
        let separator = bytes[2] as char;
        let mut octets = [0u8; 6];
        let mut groups = input.split(separator);
        for octet in &mut octets {
            let group = groups.next().ok_or_else(invalid)?;
            if group.len() != 2 || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid());
            }
            *octet = u8::from_str_radix(group, 16).map_err(|_| invalid())?;
        }
        if groups.next().is_some() {
            return Err(invalid());
        }
        Ok(MacAddr(octets))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_separators_and_any_case_and_prints_lowercase_colons() {
        let mac: MacAddr = "56:6A:E2:0B:01:8D".parse().unwrap();
        assert_eq!(mac.to_string(), "56:6a:e2:0b:01:8d");
        let dashed: MacAddr = "56-6a-e2-0b-01-8d".parse().unwrap();
        assert_eq!(dashed, mac);
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in [
            "",
            "56:6a:e2:0b:01",
            "56:6a:e2:0b:01:8d:00",
            "56:6a-e2:0b:01:8d",
            "56.6a.e2.0b.01.8d",
            "zz:6a:e2:0b:01:8d",
            "+5:6a:e2:0b:01:8d",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} was accepted");
        }
    }
}
