//! The client states of RFC 2131 figure 5, plus PROBING (RFC 5227 check before BOUND), RELEASED
//! and STOPPED (handed over without a release).

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
pub enum State {
    Init,
    Selecting,
    Requesting,
    Bound,
    Renewing,
    Rebinding,
    InitReboot,
    Rebooting,
    Probing,
    Released,
    Stopped,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Init => "INIT",
            State::Selecting => "SELECTING",
            State::Requesting => "REQUESTING",
            State::Bound => "BOUND",
            State::Renewing => "RENEWING",
            State::Rebinding => "REBINDING",
            State::InitReboot => "INIT-REBOOT",
            State::Rebooting => "REBOOTING",
            State::Probing => "PROBING",
            State::Released => "RELEASED",
            State::Stopped => "STOPPED",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_serde_use_the_rfc_names() {
        assert_eq!(State::InitReboot.to_string(), "INIT-REBOOT");
        assert_eq!(State::Bound.to_string(), "BOUND");
        assert_eq!(
            serde_json::to_string(&State::InitReboot).unwrap(),
            "\"INIT-REBOOT\""
        );
        assert_eq!(
            serde_json::to_string(&State::Rebinding).unwrap(),
            "\"REBINDING\""
        );
    }
}
