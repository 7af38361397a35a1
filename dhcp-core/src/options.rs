//! Which DHCP option codes a user's extra options (a `DhcpAddress`'s `extraOptions`, the CLI's
//! `--option`) may carry.

/// Pad (RFC 2132 section 3.1): framing inside the options field, not an option.
pub const PAD: u8 = 0;
/// End (RFC 2132 section 3.2): marks the end of the options, not an option.
pub const END: u8 = 255;

/// Option codes dhcpmanager writes itself or that change how a message is read, so a copy from
/// the user would contradict the exchange. The engine drops an extra option with one of these
/// codes; the CRD refuses it at admission (a CEL rule built from this list).
///
/// - 12 hostname: the engine sends the name it was given (`name.namespace` of the service).
/// - 50 requested address, 54 server identifier, 53 message type: each message's own, chosen
///   by the RFC 2131 state machine (INIT-REBOOT, SELECTING, RENEWING...).
/// - 51 lease time: the lease length is the server's; the engine's timers follow the lease it
///   grants, and a requested time would make renewals depend on a per-object setting.
/// - 52 overload: would tell the server to read `sname`/`file` as options, which our messages
///   never hold.
/// - 55 parameter request list: the engine asks for what it uses (mask, routers, DNS, T1/T2...).
/// - 57 maximum message size: the engine's receive buffer, not a preference.
/// - 60 vendor class: its own setting (`vendor-class`), one value per process.
/// - 61 client identifier: the lease's identity (`clientId` mode); another would lose the lease.
///
/// 81 (client FQDN) is not here: the Kubernetes path has no FQDN setting, so an extra option is
/// the way to ask the server for a DNS update. The diagnostic CLI's `--fqdn` wins over an extra
/// option 81 (see `dhcp::options` in the engine).
pub const RESERVED_OPTION_CODES: [u8; 10] = [12, 50, 51, 52, 53, 54, 55, 57, 60, 61];

/// Whether a user may send `code` as an extra option: a real option (not pad or end) that
/// dhcpmanager does not write itself.
pub fn is_user_settable(code: u8) -> bool {
    code != PAD && code != END && !RESERVED_OPTION_CODES.contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_pad_and_end_are_not_settable_and_the_rest_is() {
        for code in RESERVED_OPTION_CODES.into_iter().chain([PAD, END]) {
            assert!(!is_user_settable(code), "{code}");
        }
        for code in [1, 3, 6, 43, 77, 81, 82, 119, 254] {
            assert!(is_user_settable(code), "{code}");
        }
        let settable = (0..=255u8).filter(|&code| is_user_settable(code)).count();
        assert_eq!(settable, 256 - RESERVED_OPTION_CODES.len() - 2);
    }
}
