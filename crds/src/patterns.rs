//! The string formats the API server enforces (OpenAPI `pattern`, RE2 syntax).
//!
//! Kept in one place so the schema attributes, the tests that exercise the patterns and the
//! documentation all agree.

/// A MAC written the canonical way. Lowercase only, so that the string stored in an object is
/// the identity of the MAC: CEL equality, list-map keys and `MacPool` allocations compare
/// strings, and two spellings of one MAC must not both be accepted.
pub const MAC: &str = "^([0-9a-f]{2}:){5}[0-9a-f]{2}$";

/// A MAC that a pool may generate from: canonical, and its first octet has the locally
/// administered bit (0x02) set and the multicast bit (0x01) clear, i.e. the second hex digit
/// is 2, 6, a or e.
pub const LOCAL_UNICAST_MAC: &str = "^[0-9a-f][26ae](:[0-9a-f]{2}){5}$";

/// A DNS-1123 label: what Kubernetes allows as a namespace name (unanchored building block).
pub const LABEL: &str = "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?";

/// A DNS-1123 subdomain (dot-separated labels, at most 253 characters with `maxLength`): what
/// we send as the DHCP hostname and what Kubernetes allows as a node name.
pub const DNS_SUBDOMAIN: &str =
    "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";

/// `namespace/name` of a Service, or a bare `name` (the original API accepted both).
pub const SERVICE_REF: &str =
    "^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// A Linux interface name as people write them (`eth0`, `enp3s0.100`, `br-lan`): the kernel
/// allows at most 15 bytes and forbids `/`, `:` and whitespace; we also keep out the rest of
/// the punctuation, and a leading `.` or `-` (no `.`/`..`), so a name is always safe on a
/// command line.
pub const INTERFACE: &str = "^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,14}$";

/// Hex bytes without separators, either case (`0a1b…`); may be empty.
pub const HEX_BYTES: &str = "^([0-9A-Fa-f]{2})*$";

#[cfg(test)]
mod tests {
    use super::*;

    // The API server evaluates these with RE2; the regex crate implements the same syntax.
    fn matches(pattern: &str, text: &str) -> bool {
        regex::Regex::new(pattern).unwrap().is_match(text)
    }

    #[test]
    fn label_is_the_building_block_of_the_other_patterns() {
        assert!(DNS_SUBDOMAIN.starts_with(&format!("^{LABEL}")));
        assert!(SERVICE_REF.ends_with(&format!("{LABEL}$")));
    }

    #[test]
    fn mac_accepts_only_lowercase_colon_form() {
        assert!(matches(MAC, "aa:bb:cc:dd:ee:ff"));
        assert!(matches(MAC, "02:00:00:00:00:01"));
        for bad in [
            "AA:BB:CC:DD:EE:FF",
            "aa-bb-cc-dd-ee-ff",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "",
        ] {
            assert!(!matches(MAC, bad), "{bad:?}");
        }
    }

    #[test]
    fn local_unicast_mac_checks_the_first_octet_bits() {
        for good in [
            "02:00:00:00:00:00",
            "06:aa:00:00:00:00",
            "fa:00:00:00:00:00",
            "de:ad:be:ef:00:00",
        ] {
            assert!(matches(LOCAL_UNICAST_MAC, good), "{good:?}");
        }
        // 00 global, 01 multicast, 03 local multicast, 0c global unicast.
        for bad in [
            "00:00:00:00:00:00",
            "01:00:00:00:00:00",
            "03:00:00:00:00:00",
            "0c:00:00:00:00:00",
        ] {
            assert!(!matches(LOCAL_UNICAST_MAC, bad), "{bad:?}");
        }
    }

    #[test]
    fn dns_subdomain_accepts_labels_joined_by_dots() {
        let longest_label = "a".repeat(63);
        for good in [
            "web",
            "web.default",
            "a-b.c-d.e",
            "0x",
            longest_label.as_str(),
        ] {
            assert!(matches(DNS_SUBDOMAIN, good), "{good:?}");
        }
        let too_long_label = "a".repeat(64);
        for bad in [
            "",
            "-web",
            "web-",
            "Web",
            "web..x",
            "web.",
            "web_1",
            too_long_label.as_str(),
        ] {
            assert!(!matches(DNS_SUBDOMAIN, bad), "{bad:?}");
        }
    }

    #[test]
    fn service_ref_is_namespace_slash_name_or_name() {
        for good in ["default/web", "web", "kube-system/dns-1"] {
            assert!(matches(SERVICE_REF, good), "{good:?}");
        }
        for bad in [
            "",
            "/web",
            "default/",
            "a/b/c",
            "Default/web",
            "default/web.x",
        ] {
            assert!(!matches(SERVICE_REF, bad), "{bad:?}");
        }
    }

    #[test]
    fn interface_is_a_kernel_interface_name() {
        for good in ["eth0", "enp3s0.100", "br-lan", "bond0@x", "a23456789012345"] {
            assert!(matches(INTERFACE, good), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            "eth/0",
            "eth:0",
            "eth 0",
            "a234567890123456",
        ] {
            assert!(!matches(INTERFACE, bad), "{bad:?}");
        }
    }

    #[test]
    fn hex_bytes_wants_whole_octets() {
        for good in ["", "00", "0aFF", "deadbeef"] {
            assert!(matches(HEX_BYTES, good), "{good:?}");
        }
        for bad in ["0", "0g", "aa:bb", "abc"] {
            assert!(!matches(HEX_BYTES, bad), "{bad:?}");
        }
    }
}
