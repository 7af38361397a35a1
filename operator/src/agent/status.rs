//! Pure mappings between the engine's view of an address and the `DhcpAddress` status: what the
//! agent writes, and the lease record a (new) agent resumes from.

use chrono::{DateTime, Utc};
use dhcpmanager_crds::{
    DhcpAddressStatus, LeaseRecordStatus, Phase, condition_type, from_time, to_time,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use dhcpmanager_engine::dhcp::{LeaseRecord, MacAddr, State};
use dhcpmanager_engine::manager::AddressStatus;

/// The phase a client state shows as. A client without a record that is looking for a lease is
/// Pending; one whose lease ran out stays Expired until it binds again.
pub fn phase_of(state: State, has_record: bool, expired: bool) -> Phase {
    match state {
        State::Bound => Phase::Bound,
        State::Renewing => Phase::Renewing,
        State::Rebinding => Phase::Rebinding,
        State::Released | State::Stopped => Phase::Releasing,
        _ if expired && !has_record => Phase::Expired,
        // INIT-REBOOT keeps using a still-valid recorded lease while it asks the server.
        State::InitReboot | State::Rebooting if has_record => Phase::Bound,
        _ => Phase::Pending,
    }
}

/// What the agent knows about one address beyond the engine's status.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed<'a> {
    pub node: &'a str,
    pub generation: Option<i64>,
    pub mac: MacAddr,
    /// The lease ran out (an Expired event was seen and no lease was bound since).
    pub expired: bool,
    pub previous: Option<&'a DhcpAddressStatus>,
    pub now: DateTime<Utc>,
}

/// The status to apply for an address the agent runs.
pub fn status_for(engine: &AddressStatus, observed: &Observed<'_>) -> DhcpAddressStatus {
    let record = engine.record.as_ref();
    // An address whose link vanished cannot transmit, whatever the client's state: Pending
    // ("waiting for ... a link") until the link is back, with the lease still shown.
    let phase = match phase_of(engine.state, record.is_some(), observed.expired) {
        held if held.holds_address() && engine.link_missing => Phase::Pending,
        phase => phase,
    };
    let ready = phase.holds_address();
    let reason = match (ready, engine.link_missing) {
        (true, _) => "LeaseHeld",
        (false, true) => "LinkMissing",
        (false, false) => phase.as_str(),
    };
    let mut conditions = observed
        .previous
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    set_condition(
        &mut conditions,
        condition(
            condition_type::READY,
            ready,
            reason,
            &match record {
                Some(r) if ready => format!(
                    "{} leased from {} until {}",
                    r.ip, r.server_id, r.expires_at
                ),
                _ if engine.link_missing => format!(
                    "link {} vanished; re-creating it (the DHCP client is {})",
                    engine.interface, engine.state
                ),
                _ => format!("the DHCP client is {}", engine.state),
            },
            observed,
        ),
    );
    DhcpAddressStatus {
        phase: Some(phase),
        ip: record.map(|r| r.ip),
        prefix_length: record.map(|r| r.prefix_len),
        gateway: record.and_then(|r| r.routers.first().copied()),
        dns: record.map(|r| r.dns.clone()).unwrap_or_default(),
        mac: Some(observed.mac.to_string()),
        client_id: record.map(|r| r.client_id.clone()),
        interface: Some(engine.interface.clone()),
        node: Some(observed.node.to_string()),
        server_id: record.map(|r| r.server_id),
        obtained_at: record.map(|r| to_time(r.obtained_at)),
        renew_at: record.map(|r| to_time(r.renew_at)),
        rebind_at: record.map(|r| to_time(r.rebind_at)),
        expires_at: record.map(|r| to_time(r.expires_at)),
        last_error: engine.last_error.clone(),
        observed_generation: observed.generation,
        conditions,
        lease: record.map(record_to_status),
    }
}

/// Adds or replaces the condition of the same type; the transition time moves only when the
/// condition's status really changes (what kubectl wait and humans rely on).
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            if existing.status == new.status {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = new;
        }
        None => conditions.push(new),
    }
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    observed: &Observed<'_>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        last_transition_time: to_time(observed.now),
        observed_generation: observed.generation,
    }
}

pub fn record_to_status(record: &LeaseRecord) -> LeaseRecordStatus {
    LeaseRecordStatus {
        ip: record.ip,
        prefix_length: record.prefix_len,
        routers: record.routers.clone(),
        dns: record.dns.clone(),
        domain_name: record.domain_name.clone(),
        mac: record.mac.to_string(),
        client_id: record.client_id.clone(),
        server_id: record.server_id,
        server_mac: record.server_mac.map(|m| m.to_string()),
        lease_seconds: record.lease_seconds,
        obtained_at: to_time(record.obtained_at),
        renew_at: to_time(record.renew_at),
        rebind_at: to_time(record.rebind_at),
        expires_at: to_time(record.expires_at),
    }
}

/// The record a new agent resumes from; `None` if the status holds nothing usable (a record
/// with an unparsable MAC cannot be resumed safely: it would be another client).
pub fn record_from_status(
    status: &LeaseRecordStatus,
    hostname: Option<String>,
) -> Option<LeaseRecord> {
    Some(LeaseRecord {
        ip: status.ip,
        prefix_len: status.prefix_length,
        routers: status.routers.clone(),
        dns: status.dns.clone(),
        domain_name: status.domain_name.clone(),
        mac: status.mac.parse().ok()?,
        client_id: status.client_id.clone(),
        hostname,
        server_id: status.server_id,
        server_mac: status.server_mac.as_deref().and_then(|m| m.parse().ok()),
        lease_seconds: status.lease_seconds,
        obtained_at: from_time(&status.obtained_at),
        renew_at: from_time(&status.renew_at),
        rebind_at: from_time(&status.rebind_at),
        expires_at: from_time(&status.expires_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(state: State, record: Option<LeaseRecord>) -> AddressStatus {
        AddressStatus {
            state,
            record,
            interface: "dm0123456789ab".into(),
            ifindex: 7,
            last_error: None,
            finished: false,
            link_missing: false,
        }
    }

    fn observed(now: DateTime<Utc>, previous: Option<&DhcpAddressStatus>) -> Observed<'_> {
        Observed {
            node: "node-a",
            generation: Some(3),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            expired: false,
            previous,
            now,
        }
    }

    #[test]
    fn record_round_trips_through_status() {
        let now = Utc::now();
        let record = dhcpmanager_engine::fixtures::lease_record(now);
        let back = record_from_status(&record_to_status(&record), record.hostname.clone());
        assert_eq!(back, Some(record));
    }

    #[test]
    fn bound_status_carries_the_lease_and_a_ready_condition() {
        let now = Utc::now();
        let record = dhcpmanager_engine::fixtures::lease_record(now);
        let status = status_for(
            &engine(State::Bound, Some(record.clone())),
            &observed(now, None),
        );
        assert_eq!(status.phase, Some(Phase::Bound));
        assert_eq!(status.ip, Some(record.ip));
        assert_eq!(status.node.as_deref(), Some("node-a"));
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.lease, Some(record_to_status(&record)));
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.type_.as_str(), ready.status.as_str()),
            ("Ready", "True")
        );
    }

    #[test]
    fn transition_time_only_moves_when_the_condition_flips() {
        let t0 = Utc::now();
        let record = dhcpmanager_engine::fixtures::lease_record(t0);
        let first = status_for(
            &engine(State::Bound, Some(record.clone())),
            &observed(t0, None),
        );
        let t1 = t0 + chrono::Duration::seconds(30);
        let renewing = status_for(
            &engine(State::Renewing, Some(record)),
            &observed(t1, Some(&first)),
        );
        assert_eq!(renewing.conditions[0].last_transition_time, to_time(t0));
        let t2 = t1 + chrono::Duration::seconds(30);
        let lost = status_for(
            &engine(State::Selecting, None),
            &observed(t2, Some(&renewing)),
        );
        assert_eq!(lost.conditions[0].status, "False");
        assert_eq!(lost.conditions[0].last_transition_time, to_time(t2));
    }

    #[test]
    fn a_lease_whose_link_vanished_is_not_shown_bound() {
        let now = Utc::now();
        let record = dhcpmanager_engine::fixtures::lease_record(now);
        let mut missing = engine(State::Bound, Some(record.clone()));
        missing.link_missing = true;
        let status = status_for(&missing, &observed(now, None));
        assert_eq!(status.phase, Some(Phase::Pending));
        assert_eq!(status.ip, Some(record.ip), "the lease is still shown");
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "LinkMissing")
        );
        assert!(ready.message.contains("vanished"), "{}", ready.message);
        missing.link_missing = false;
        let back = status_for(&missing, &observed(now, Some(&status)));
        assert_eq!(back.phase, Some(Phase::Bound));
    }

    #[test]
    fn phases() {
        assert_eq!(phase_of(State::Selecting, false, false), Phase::Pending);
        assert_eq!(phase_of(State::Selecting, false, true), Phase::Expired);
        assert_eq!(phase_of(State::Rebooting, true, false), Phase::Bound);
        assert_eq!(phase_of(State::Rebinding, true, false), Phase::Rebinding);
        assert_eq!(phase_of(State::Released, false, false), Phase::Releasing);
    }
}
