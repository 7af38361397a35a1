//! MAC addresses as the API writes them: six lowercase hex octets separated by colons.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// A MAC address. Parses either case, always prints the canonical lowercase form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Bit 0 of the first octet: the address names a group, not one interface.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Bit 1 of the first octet: the address was not assigned by a vendor, so a pool may
    /// generate it without colliding with real hardware.
    pub fn is_locally_administered(self) -> bool {
        self.0[0] & 0x02 != 0
    }

    pub(crate) fn to_u64(self) -> u64 {
        self.0
            .iter()
            .fold(0, |acc, octet| (acc << 8) | u64::from(*octet))
    }

    pub(crate) fn from_u64(value: u64) -> Self {
        let bytes = value.to_be_bytes();
        MacAddr([bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]])
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || Error::InvalidMac(text.to_string());
        let mut octets = [0u8; 6];
        let mut parts = text.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(invalid)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
        }
        if parts.next().is_some() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_either_case_and_prints_lowercase() {
        let mac: MacAddr = "02:AB:cd:00:0F:ff".parse().unwrap();
        assert_eq!(mac.octets(), [0x02, 0xab, 0xcd, 0x00, 0x0f, 0xff]);
        assert_eq!(mac.to_string(), "02:ab:cd:00:0f:ff");
    }

    #[test]
    fn rejects_malformed_text() {
        for text in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "02-00-00-00-00-00",
            "2:00:00:00:00:00",
            "02:00:00:00:00:0g",
            "020:00:00:00:00:0",
            "+2:00:00:00:00:00",
        ] {
            assert_eq!(
                text.parse::<MacAddr>(),
                Err(Error::InvalidMac(text.to_string())),
                "{text:?}"
            );
        }
    }

    #[test]
    fn classifies_the_first_octet_bits() {
        let local: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        assert!(local.is_locally_administered() && !local.is_multicast());
        let multicast: MacAddr = "01:00:5e:00:00:01".parse().unwrap();
        assert!(multicast.is_multicast() && !multicast.is_locally_administered());
    }

    #[test]
    fn u64_conversion_round_trips() {
        let mac: MacAddr = "fe:dc:ba:98:76:54".parse().unwrap();
        assert_eq!(mac.to_u64(), 0xfedc_ba98_7654);
        assert_eq!(MacAddr::from_u64(mac.to_u64()), mac);
    }
}
