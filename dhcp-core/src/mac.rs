//! The MAC address: a pool's entries and allocations in the API, chaddr, client ids and L2
//! destinations in the engine.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A MAC address that did not parse, with what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {input:?}: {problem}")]
pub struct MacError {
    pub input: String,
    pub problem: &'static str,
}

/// An Ethernet MAC address. Written `aa:bb:cc:dd:ee:ff` (lowercase) everywhere it leaves the process.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// The U/L bit: pool MACs should have it set so they never collide with vendor-assigned ones.
    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// The I/G bit: a multicast MAC can never be a source address, hence never a chaddr.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Whether a host may send from this address: not all-zero, not multicast (which includes
    /// broadcast). A pool MAC that is not would take a POST and then fail it.
    pub fn is_usable_source(&self) -> bool {
        !self.is_multicast() && self.0 != [0; 6]
    }

    /// The address as a 48-bit number, so a pool's range can be counted through.
    pub fn to_u64(self) -> u64 {
        self.0
            .iter()
            .fold(0, |acc, octet| (acc << 8) | u64::from(*octet))
    }

    /// The low 48 bits of `value` as an address (the inverse of [`MacAddr::to_u64`]).
    pub fn from_u64(value: u64) -> Self {
        let bytes = value.to_be_bytes();
        MacAddr([bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]])
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    /// Accepts six two-digit hex groups separated consistently by `:` or `-`, in any case.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |problem| MacError {
            input: input.to_string(),
            problem,
        };
        if input.len() != 17 {
            return Err(invalid(
                "expected 17 characters (six hex pairs separated by ':' or '-')",
            ));
        }
        let separator = input.as_bytes()[2];
        if separator != b':' && separator != b'-' {
            return Err(invalid("separator must be ':' or '-'"));
        }
        let mut octets = [0u8; 6];
        for (index, group) in input.split(separator as char).enumerate() {
            if index >= 6 {
                return Err(invalid("mixed or extra separators"));
            }
            if group.len() != 2 || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid("each group must be exactly two hex digits"));
            }
            octets[index] =
                u8::from_str_radix(group, 16).map_err(|_| invalid("not a hex number"))?;
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
    fn parses_colon_and_dash_forms_in_any_case() {
        let expected = MacAddr([0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0x01]);
        assert_eq!("aa:bb:0c:dd:ee:01".parse::<MacAddr>().unwrap(), expected);
        assert_eq!("AA-BB-0C-DD-EE-01".parse::<MacAddr>().unwrap(), expected);
        assert_eq!("Aa:bB:0c:Dd:eE:01".parse::<MacAddr>().unwrap(), expected);
    }

    #[test]
    fn rejects_malformed_input_with_a_reason() {
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb-cc:dd:ee:ff",
            "aa.bb.cc.dd.ee.ff",
            "aabb.ccdd.eeff...",
            "gg:bb:cc:dd:ee:ff",
            "aa:bb:cc:dd:ee:f ",
            "+a:bb:cc:dd:ee:ff",
            "aabbccddeeff",
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert_eq!(err.input, bad, "{err}");
        }
    }

    #[test]
    fn displays_lowercase_colon_form_and_round_trips_through_serde() {
        let mac: MacAddr = "02-00-5E-10-00-FF".parse().unwrap();
        assert_eq!(mac.to_string(), "02:00:5e:10:00:ff");
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"02:00:5e:10:00:ff\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), mac);
        assert!(serde_json::from_str::<MacAddr>("\"nonsense\"").is_err());
    }

    #[test]
    fn classifies_address_bits() {
        let local: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        assert!(local.is_locally_administered() && !local.is_multicast());
        let vendor: MacAddr = "00:1b:21:00:00:01".parse().unwrap();
        assert!(!vendor.is_locally_administered() && !vendor.is_multicast());
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(
            "01:00:5e:00:00:01"
                .parse::<MacAddr>()
                .unwrap()
                .is_multicast()
        );
    }

    #[test]
    fn u64_conversion_round_trips() {
        let mac: MacAddr = "fe:dc:ba:98:76:54".parse().unwrap();
        assert_eq!(mac.to_u64(), 0xfedc_ba98_7654);
        assert_eq!(MacAddr::from_u64(mac.to_u64()), mac);
    }
}
