//! Which options the client puts in its messages and how identity options are built.

use dhcproto::v4::{DhcpOption, OptionCode, UnknownOption};

use dhcpmanager_dhcp_core::is_user_settable;

use super::config::{ClientConfig, ClientIdMode};
use super::mac::MacAddr;

/// Option 57: the largest message we accept. 1500 fits an untagged Ethernet frame.
pub const MAX_MESSAGE_SIZE: u16 = 1500;

/// Option 61 for this MAC in the given mode.
pub fn client_id_bytes(mode: &ClientIdMode, mac: MacAddr) -> Vec<u8> {
    let octets = mac.octets();
    match mode {
        ClientIdMode::Stable => {
            // RFC 4361 section 6.1: 0xff, IAID, DUID. DUID-LL = type 3, hardware type 1, MAC.
            let mut id = vec![0xff];
            id.extend_from_slice(&octets[2..6]);
            id.extend_from_slice(&[0x00, 0x03, 0x00, 0x01]);
            id.extend_from_slice(&octets);
            id
        }
        ClientIdMode::Mac => {
            let mut id = vec![0x01];
            id.extend_from_slice(&octets);
            id
        }
        ClientIdMode::Custom(bytes) => bytes.clone(),
    }
}

/// Option 81 body (RFC 4702): flags S=1 (server updates A) and E=1 (canonical wire encoding),
/// RCODE1/2 zero, then the name. `None` when the name cannot be encoded (empty or over-long
/// labels), in which case the option is left out rather than sent malformed.
pub fn fqdn_option_body(fqdn: &str) -> Option<Vec<u8>> {
    const FLAG_S: u8 = 0x01;
    const FLAG_E: u8 = 0x04;
    let name = fqdn.strip_suffix('.').unwrap_or(fqdn);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let mut body = vec![FLAG_S | FLAG_E, 0, 0];
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        body.push(label.len() as u8);
        body.extend_from_slice(label.as_bytes());
    }
    body.push(0);
    Some(body)
}

/// Option 61 alone: the only identity option DECLINE and RELEASE may carry (RFC 2131 table 5).
pub fn client_id_option(cfg: &ClientConfig) -> DhcpOption {
    DhcpOption::ClientIdentifier(own_client_id(cfg))
}

/// The options every DISCOVER and REQUEST carries besides message type, 50 and 54.
pub fn negotiation_options(cfg: &ClientConfig) -> Vec<DhcpOption> {
    let mut options = vec![client_id_option(cfg)];
    if let Some(hostname) = &cfg.hostname {
        options.push(DhcpOption::Hostname(hostname.clone()));
    }
    if let Some(body) = cfg.fqdn.as_deref().and_then(fqdn_option_body) {
        options.push(unknown(OptionCode::ClientFQDN, body));
    }
    if let Some(class) = &cfg.vendor_class {
        options.push(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
    }
    options.push(DhcpOption::ParameterRequestList(
        cfg.parameter_request_list
            .iter()
            .map(|&code| code.into())
            .collect(),
    ));
    options.push(DhcpOption::MaxMessageSize(MAX_MESSAGE_SIZE));
    // The codes the engine writes itself are dropped (the API refuses them before they get
    // here; see RESERVED_OPTION_CODES for why each is reserved), and so is an option 81 when the
    // client has its own FQDN setting: options are keyed by code, a later one would replace it.
    let own_fqdn = cfg.fqdn.is_some();
    for (code, data) in &cfg.extra_options {
        if is_user_settable(*code) && !(own_fqdn && *code == u8::from(OptionCode::ClientFQDN)) {
            options.push(unknown((*code).into(), data.clone()));
        }
    }
    options
}

/// Raw bytes under a given code: dhcproto encodes `Unknown` verbatim whatever the code.
fn unknown(code: OptionCode, data: Vec<u8>) -> DhcpOption {
    DhcpOption::Unknown(UnknownOption::new(code, data))
}

/// Option 61 as this configuration sends it.
pub fn own_client_id(cfg: &ClientConfig) -> Vec<u8> {
    client_id_bytes(&cfg.client_id, cfg.mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);

    #[test]
    fn stable_client_id_is_rfc_4361_iaid_plus_duid_ll() {
        let id = client_id_bytes(&ClientIdMode::Stable, MAC);
        assert_eq!(hex::encode(&id), "ff2233445500030001021122334455");
        assert_eq!(id.len(), 1 + 4 + 4 + 6);
    }

    #[test]
    fn mac_and_custom_client_ids() {
        assert_eq!(
            client_id_bytes(&ClientIdMode::Mac, MAC),
            [1, 2, 0x11, 0x22, 0x33, 0x44, 0x55]
        );
        assert_eq!(
            client_id_bytes(&ClientIdMode::Custom(vec![9, 8, 7]), MAC),
            [9, 8, 7]
        );
    }

    #[test]
    fn fqdn_body_is_wire_encoded_with_server_update_flag() {
        let body = fqdn_option_body("web.example.org.").unwrap();
        assert_eq!(body[0], 0x05);
        assert_eq!(&body[1..3], &[0, 0]);
        assert_eq!(&body[3..], b"\x03web\x07example\x03org\x00");
        assert_eq!(fqdn_option_body(""), None);
        assert_eq!(fqdn_option_body("a..b"), None);
        assert_eq!(fqdn_option_body(&"x".repeat(64)), None);
    }

    #[test]
    fn negotiation_options_skip_the_extras_dhcpmanager_writes_itself() {
        let mut cfg = ClientConfig::new(MAC);
        cfg.hostname = Some("web.default".into());
        cfg.vendor_class = Some("dhcpmanager".into());
        cfg.extra_options = vec![
            (53, vec![1]),
            (54, vec![1, 2, 3, 4]),
            (12, b"other".to_vec()),
            (55, vec![1]),
            (60, b"other".to_vec()),
            (0, vec![]),
            (255, vec![]),
            (77, b"user".to_vec()),
            (81, vec![5, 0, 0]),
        ];
        let options = negotiation_options(&cfg);
        let codes: Vec<u8> = options
            .iter()
            .map(|o| u8::from(OptionCode::from(o)))
            .collect();
        assert_eq!(codes, vec![61, 12, 60, 55, 57, 77, 81]);
        let hostname = options.iter().find_map(|option| match option {
            DhcpOption::Hostname(name) => Some(name.as_str()),
            _ => None,
        });
        assert_eq!(hostname, Some("web.default"));
    }

    #[test]
    fn an_own_fqdn_wins_over_an_extra_option_81() {
        let mut cfg = ClientConfig::new(MAC);
        cfg.fqdn = Some("web.example.org".into());
        cfg.extra_options = vec![(81, vec![5, 0, 0])];
        let fqdn_bodies: Vec<Vec<u8>> = negotiation_options(&cfg)
            .into_iter()
            .filter_map(|option| match option {
                DhcpOption::Unknown(unknown) if u8::from(unknown.code()) == 81 => {
                    Some(unknown.data().to_vec())
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            fqdn_bodies,
            vec![fqdn_option_body("web.example.org").unwrap()]
        );
    }
}
