//! Every transition of the client, driven by a fake clock and a scripted server; each
//! transmission is decoded with dhcproto and its fields asserted.

use std::net::Ipv4Addr;

use chrono::{DateTime, TimeDelta, Utc};
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};

use super::client::Client;
use super::config::ClientConfig;
use super::event::{Action, ClientEvent};
use super::mac::MacAddr;
use super::message::{L2Dest, MessageKind, Transmission};
use super::record::LeaseRecord;
use super::reply::RejectReason;
use super::state::State;
use super::testkit::*;
use super::usable::Unusable;

const SEED: u64 = 42;

/// Recognises the rejection a hostile datagram must cause.
type RejectCheck = fn(&RejectReason) -> bool;

/// Runs DISCOVER/OFFER/REQUEST/ACK; the ACK is built by `ack` from the REQUEST.
fn bind_with(cfg: ClientConfig, ack: impl Fn(&Message) -> ReplyBuilder) -> (Client, DateTime<Utc>) {
    let mut client = Client::new(cfg, SEED);
    let now = t0();
    let (_, discover) = only_sent(&client.start(now));
    let offer = ReplyBuilder::to(&discover, MessageType::Offer).bytes();
    let (_, request) = only_sent(&client.on_reply(now, &offer, meta()));
    let actions = client.on_reply(now, &ack(&request).bytes(), meta());
    assert_eq!(client.state(), State::Bound, "{actions:#?}");
    (client, now)
}

fn bound(cfg: ClientConfig, lease: u32) -> (Client, DateTime<Utc>) {
    bind_with(cfg, |request| {
        ReplyBuilder::to(request, MessageType::Ack).lease(lease)
    })
}

fn record(client: &Client) -> LeaseRecord {
    client.record().expect("a lease record").clone()
}

fn advance_to_deadline(client: &mut Client) -> (DateTime<Utc>, Vec<Action>) {
    let deadline = client.deadline().expect("a deadline");
    (deadline, client.on_timeout(deadline))
}

fn assert_rfc_negotiation_options(msg: &Message) {
    let opts = msg.opts();
    assert_eq!(
        opts.get(OptionCode::ClientIdentifier),
        Some(&DhcpOption::ClientIdentifier(
            hex::decode("ff00000001000300010 2dc00000001".replace(' ', "")).unwrap()
        ))
    );
    assert_eq!(
        opts.get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("web.default".into()))
    );
    assert_eq!(
        opts.get(OptionCode::MaxMessageSize),
        Some(&DhcpOption::MaxMessageSize(1500))
    );
    let Some(DhcpOption::ParameterRequestList(prl)) = opts.get(OptionCode::ParameterRequestList)
    else {
        panic!("no parameter request list");
    };
    let prl: Vec<u8> = prl.iter().map(|&code| code.into()).collect();
    assert_eq!(prl, vec![1, 3, 6, 15, 51, 54, 58, 59]);
}

fn assert_broadcast_from_nowhere(tx: &Transmission) {
    assert_eq!(tx.src_ip, Ipv4Addr::UNSPECIFIED);
    assert_eq!(tx.dst_ip, Ipv4Addr::BROADCAST);
    assert_eq!(tx.l2_dest, L2Dest::Broadcast);
}

/// The INIT-REBOOT form: broadcast flag, ciaddr 0, option 50 = ip, no server id.
fn assert_init_reboot_form(tx: &Transmission, msg: &Message, ip: Ipv4Addr) {
    assert_eq!(tx.kind, MessageKind::Request);
    assert_eq!(msg_type(msg), MessageType::Request);
    assert_broadcast_from_nowhere(tx);
    assert!(msg.flags().broadcast());
    assert_eq!(msg.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(requested_ip(msg), Some(ip));
    assert_eq!(server_id(msg), None);
    assert_rfc_negotiation_options(msg);
}

#[test]
fn full_dora_binds_with_the_rfc_message_forms() {
    let mut client = Client::new(config(), SEED);
    assert_eq!(client.state(), State::Init);
    let now = t0();

    let actions = client.start(now);
    let (tx, discover) = only_sent(&actions);
    assert_eq!(client.state(), State::Selecting);
    assert_eq!(tx.kind, MessageKind::Discover);
    assert_broadcast_from_nowhere(&tx);
    assert_eq!(msg_type(&discover), MessageType::Discover);
    assert_eq!(discover.xid(), client.xid());
    assert_eq!(discover.chaddr(), &CLIENT_MAC.octets());
    assert_eq!(discover.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(discover.flags().broadcast());
    assert_eq!(discover.secs(), 0);
    assert_eq!(requested_ip(&discover), None);
    assert_eq!(server_id(&discover), None);
    assert_rfc_negotiation_options(&discover);
    assert!(events(&actions).contains(&&ClientEvent::StateChanged {
        from: State::Init,
        to: State::Selecting
    }));

    let later = now + secs(1.5);
    let offer = ReplyBuilder::to(&discover, MessageType::Offer).bytes();
    let (tx, request) = only_sent(&client.on_reply(later, &offer, meta()));
    assert_eq!(client.state(), State::Requesting);
    assert_broadcast_from_nowhere(&tx);
    assert_eq!(msg_type(&request), MessageType::Request);
    assert_eq!(
        request.xid(),
        discover.xid(),
        "REQUEST keeps the DISCOVER's xid"
    );
    assert_eq!(request.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(requested_ip(&request), Some(OFFERED_IP));
    assert_eq!(server_id(&request), Some(SERVER_ID));
    assert_eq!(request.secs(), 1);
    assert_rfc_negotiation_options(&request);

    let ack_at = later + secs(2.0);
    let ack = ReplyBuilder::to(&request, MessageType::Ack)
        .lease(3600)
        .bytes();
    let actions = client.on_reply(ack_at, &ack, meta());
    assert_eq!(client.state(), State::Bound);
    assert!(sent(&actions).is_empty());
    let record = record(&client);
    assert!(actions.contains(&Action::Persist(record.clone())));
    assert!(events(&actions).contains(&&ClientEvent::Bound {
        record: record.clone(),
        renewal: false,
        after_failures: 0
    }));
    assert_eq!(record.ip, OFFERED_IP);
    assert_eq!(record.prefix_len, 24);
    assert_eq!(record.routers, vec![SERVER_ID]);
    assert_eq!(record.dns, vec![Ipv4Addr::new(10, 9, 0, 2)]);
    assert_eq!(record.domain_name.as_deref(), Some("lab.test"));
    assert_eq!(record.mac, CLIENT_MAC);
    assert_eq!(
        record.client_id,
        "ff0000000100030001 02dc00000001".replace(' ', "")
    );
    assert_eq!(record.hostname.as_deref(), Some("web.default"));
    assert_eq!(record.server_id, SERVER_ID);
    assert_eq!(record.server_mac, Some(SERVER_MAC));
    assert_eq!(record.lease_seconds, 3600);
    // RFC 2131 4.4.1: the lease counts from when the REQUEST was sent, not when the ACK came.
    assert_eq!(record.obtained_at, later);
    assert_eq!(record.expires_at, later + TimeDelta::seconds(3600));
    assert_eq!(client.deadline(), Some(record.renew_at));
}

#[test]
fn discover_retransmits_with_doubling_backoff_forever_keeping_the_xid() {
    let mut client = Client::new(config(), SEED);
    let mut now = t0();
    let (_, first) = only_sent(&client.start(now));
    for nominal in [4.0, 8.0, 16.0, 32.0, 64.0, 64.0, 64.0, 64.0] {
        let deadline = client.deadline().unwrap();
        let waited = as_secs(deadline - now);
        assert!(
            (nominal - 1.0..=nominal + 1.0).contains(&waited),
            "waited {waited}, nominal {nominal}"
        );
        assert!(
            client.on_timeout(deadline - secs(0.001)).is_empty(),
            "nothing before the deadline"
        );
        let (tx, again) = only_sent(&client.on_timeout(deadline));
        assert_eq!(tx.kind, MessageKind::Discover);
        assert_eq!(again.xid(), first.xid());
        assert_eq!(i64::from(again.secs()), (deadline - t0()).num_seconds());
        assert_eq!(client.state(), State::Selecting);
        now = deadline;
    }
}

#[test]
fn requesting_gives_up_after_the_configured_attempts_and_discovers_again() {
    let mut client = Client::new(config(), SEED);
    let (_, discover) = only_sent(&client.start(t0()));
    let offer = ReplyBuilder::to(&discover, MessageType::Offer).bytes();
    only_sent(&client.on_reply(t0(), &offer, meta()));
    let mut now = t0();
    for nominal in [4.0, 8.0, 16.0] {
        let (deadline, actions) = advance_to_deadline(&mut client);
        assert!((nominal - 1.0..=nominal + 1.0).contains(&as_secs(deadline - now)));
        let (_, request) = only_sent(&actions);
        assert_eq!(msg_type(&request), MessageType::Request);
        assert_eq!(request.xid(), discover.xid());
        assert_eq!(client.state(), State::Requesting);
        now = deadline;
    }
    let (_, actions) = advance_to_deadline(&mut client);
    let (_, rediscover) = only_sent(&actions);
    assert_eq!(msg_type(&rediscover), MessageType::Discover);
    assert_ne!(
        rediscover.xid(),
        discover.xid(),
        "a new exchange gets a new xid"
    );
    assert_eq!(client.state(), State::Selecting);
}

#[test]
fn nak_in_requesting_restarts_from_init_after_a_short_random_delay() {
    let mut client = Client::new(config(), SEED);
    let (_, discover) = only_sent(&client.start(t0()));
    let offer = ReplyBuilder::to(&discover, MessageType::Offer).bytes();
    let (_, request) = only_sent(&client.on_reply(t0(), &offer, meta()));
    let nak = ReplyBuilder::to(&request, MessageType::Nak)
        .option(DhcpOption::Message("address not available".into()))
        .bytes();
    let actions = client.on_reply(t0(), &nak, meta());
    assert!(sent(&actions).is_empty());
    assert_eq!(client.state(), State::Init);
    assert!(client.record().is_none());
    assert!(events(&actions).contains(&&ClientEvent::Nak {
        server: SERVER_ID,
        message: Some("address not available".into()),
        state: State::Requesting,
    }));
    let delay = as_secs(client.deadline().unwrap() - t0());
    assert!((0.0..=4.0).contains(&delay), "{delay}");
    let (_, actions) = advance_to_deadline(&mut client);
    let (_, again) = only_sent(&actions);
    assert_eq!(msg_type(&again), MessageType::Discover);
    assert_eq!(client.state(), State::Selecting);
}

#[test]
fn silence_through_t1_t2_and_expiry_with_the_ip_not_assigned() {
    let (mut client, start) = bound(config(), 3600);
    let held = record(&client);
    assert!((as_secs(held.renew_at - start) - 1800.0).abs() <= 2.0);
    assert!((as_secs(held.rebind_at - start) - 3150.0).abs() <= 2.0);

    // RENEWING: INIT-REBOOT form (the IP is not on the link), retransmitted at half the time to T2.
    let (t1, actions) = advance_to_deadline(&mut client);
    assert_eq!(t1, held.renew_at);
    assert_eq!(client.state(), State::Renewing);
    let (tx, renew) = only_sent(&actions);
    assert_init_reboot_form(&tx, &renew, OFFERED_IP);
    let renew_xid = renew.xid();
    let mut now = t1;
    let mut renew_sends = 1;
    while client.state() == State::Renewing {
        let deadline = client.deadline().unwrap();
        let expected = (now + (held.rebind_at - now) / 2)
            .max(now + TimeDelta::seconds(60))
            .min(held.rebind_at);
        assert_eq!(deadline, expected);
        let actions = client.on_timeout(deadline);
        let (tx, msg) = only_sent(&actions);
        assert_init_reboot_form(&tx, &msg, OFFERED_IP);
        if client.state() == State::Renewing {
            assert_eq!(msg.xid(), renew_xid);
            renew_sends += 1;
        } else {
            assert_eq!(deadline, held.rebind_at);
            assert_ne!(msg.xid(), renew_xid, "REBINDING is a new exchange");
        }
        now = deadline;
    }
    assert!(renew_sends >= 4, "{renew_sends}");
    assert_eq!(client.state(), State::Rebinding);

    // REBINDING: same form, retransmitted at half the time to expiry, never past it.
    while client.state() == State::Rebinding {
        let deadline = client.deadline().unwrap();
        let expected = (now + (held.expires_at - now) / 2)
            .max(now + TimeDelta::seconds(60))
            .min(held.expires_at);
        assert_eq!(deadline, expected);
        let actions = client.on_timeout(deadline);
        now = deadline;
        if client.state() == State::Rebinding {
            let (tx, msg) = only_sent(&actions);
            assert_init_reboot_form(&tx, &msg, OFFERED_IP);
        } else {
            assert_eq!(deadline, held.expires_at);
            assert!(actions.contains(&Action::ClearRecord));
            assert!(events(&actions).contains(&&ClientEvent::Expired { ip: OFFERED_IP }));
            let (_, discover) = only_sent(&actions);
            assert_eq!(msg_type(&discover), MessageType::Discover);
            assert_eq!(
                requested_ip(&discover),
                Some(OFFERED_IP),
                "asks for the old address back"
            );
        }
    }
    assert_eq!(client.state(), State::Selecting);
    assert!(client.record().is_none());
}

#[test]
fn silence_through_t1_t2_and_expiry_with_the_ip_assigned_uses_rfc_forms() {
    let mut cfg = config();
    cfg.ip_assigned = true;
    let (mut client, _) = bound(cfg, 3600);
    let held = record(&client);
    let mut now = held.obtained_at;
    let mut seen = Vec::new();
    while client.record().is_some() {
        let deadline = client.deadline().unwrap();
        let limit = match client.state() {
            State::Bound => held.renew_at,
            State::Renewing => held.rebind_at,
            _ => held.expires_at,
        };
        if client.state() != State::Bound {
            let expected = (now + (limit - now) / 2)
                .max(now + TimeDelta::seconds(60))
                .min(limit);
            assert_eq!(deadline, expected, "retransmit time in {}", client.state());
        } else {
            assert_eq!(deadline, held.renew_at);
        }
        let actions = client.on_timeout(deadline);
        now = deadline;
        let (tx, msg) = only_sent(&actions);
        match client.state() {
            // RFC RENEWING: unicast to the server from the leased IP, ciaddr set, no 50/54.
            State::Renewing => {
                assert_eq!((tx.src_ip, tx.dst_ip), (OFFERED_IP, SERVER_ID));
                assert_eq!(tx.l2_dest, L2Dest::Unicast(SERVER_MAC));
                assert_eq!(msg.ciaddr(), OFFERED_IP);
                assert_eq!((requested_ip(&msg), server_id(&msg)), (None, None));
                assert_rfc_negotiation_options(&msg);
            }
            // RFC REBINDING: broadcast from the leased IP, ciaddr set, no 50/54.
            State::Rebinding => {
                assert_eq!((tx.src_ip, tx.dst_ip), (OFFERED_IP, Ipv4Addr::BROADCAST));
                assert_eq!(tx.l2_dest, L2Dest::Broadcast);
                assert_eq!(msg.ciaddr(), OFFERED_IP);
                assert_eq!((requested_ip(&msg), server_id(&msg)), (None, None));
            }
            State::Selecting => {
                assert_eq!(deadline, held.expires_at);
                assert!(actions.contains(&Action::ClearRecord));
                assert!(events(&actions).contains(&&ClientEvent::Expired { ip: OFFERED_IP }));
                assert_eq!(msg_type(&msg), MessageType::Discover);
            }
            other => panic!("unexpected state {other}"),
        }
        seen.push(client.state());
    }
    assert_eq!(seen.first(), Some(&State::Renewing));
    assert!(seen.iter().filter(|&&s| s == State::Renewing).count() >= 4);
    assert!(seen.iter().filter(|&&s| s == State::Rebinding).count() >= 2);
    assert_eq!(seen.last(), Some(&State::Selecting));
}

#[test]
fn renewal_unicasts_at_l2_broadcast_when_the_server_mac_is_unknown() {
    let mut cfg = config();
    cfg.ip_assigned = true;
    let mut client = Client::new(cfg, SEED);
    let (_, discover) = only_sent(&client.start(t0()));
    let offer = ReplyBuilder::to(&discover, MessageType::Offer).bytes();
    let (_, request) = only_sent(&client.on_reply(t0(), &offer, meta()));
    let ack = ReplyBuilder::to(&request, MessageType::Ack).bytes();
    let broadcast_meta = super::client::ReplyMeta {
        src_mac: MacAddr::BROADCAST,
        src_ip: SERVER_ID,
    };
    client.on_reply(t0(), &ack, broadcast_meta);
    assert_eq!(record(&client).server_mac, None);
    let (_, actions) = advance_to_deadline(&mut client);
    let (tx, _) = only_sent(&actions);
    assert_eq!((tx.dst_ip, tx.l2_dest), (SERVER_ID, L2Dest::Broadcast));
}

#[test]
fn ack_in_renewing_extends_the_lease_from_the_request_time() {
    let (mut client, _) = bound(config(), 3600);
    let (t1, actions) = advance_to_deadline(&mut client);
    let (_, renew) = only_sent(&actions);
    let ack_at = t1 + secs(0.5);
    let ack = ReplyBuilder::to(&renew, MessageType::Ack)
        .lease(3600)
        .bytes();
    let actions = client.on_reply(ack_at, &ack, meta());
    assert_eq!(client.state(), State::Bound);
    let extended = record(&client);
    assert_eq!(extended.obtained_at, t1);
    assert_eq!(extended.expires_at, t1 + TimeDelta::seconds(3600));
    assert!(actions.contains(&Action::Persist(extended.clone())));
    assert!(events(&actions).contains(&&ClientEvent::Bound {
        record: extended,
        renewal: true,
        after_failures: 0
    }));
    assert!(
        !events(&actions)
            .iter()
            .any(|e| matches!(e, ClientEvent::IpChanged { .. }))
    );
}

#[test]
fn server_t1_t2_options_are_used_and_recomputed_on_every_ack() {
    let (mut client, start) = bind_with(config(), |request| {
        ReplyBuilder::to(request, MessageType::Ack)
            .lease(1000)
            .option(DhcpOption::Renewal(100))
            .option(DhcpOption::Rebinding(700))
    });
    let first = record(&client);
    assert!((as_secs(first.renew_at - start) - 100.0).abs() <= 2.0);
    assert!((as_secs(first.rebind_at - start) - 700.0).abs() <= 2.0);

    let (t1, actions) = advance_to_deadline(&mut client);
    let (_, renew) = only_sent(&actions);
    // The renewal ACK carries no T1/T2 any more: back to 0.5 / 0.875 of its lease.
    let ack = ReplyBuilder::to(&renew, MessageType::Ack)
        .lease(2000)
        .bytes();
    client.on_reply(t1, &ack, meta());
    let second = record(&client);
    assert!((as_secs(second.renew_at - t1) - 1000.0).abs() <= 2.0);
    assert!((as_secs(second.rebind_at - t1) - 1750.0).abs() <= 2.0);
    assert_eq!(second.expires_at, t1 + TimeDelta::seconds(2000));

    let (t1, actions) = advance_to_deadline(&mut client);
    let (_, renew) = only_sent(&actions);
    let ack = ReplyBuilder::to(&renew, MessageType::Ack)
        .lease(600)
        .option(DhcpOption::Renewal(60))
        .option(DhcpOption::Rebinding(120))
        .bytes();
    client.on_reply(t1, &ack, meta());
    let third = record(&client);
    assert!((as_secs(third.renew_at - t1) - 60.0).abs() <= 2.0);
    assert!((as_secs(third.rebind_at - t1) - 120.0).abs() <= 2.0);
}

#[test]
fn nak_while_renewing_rebinding_or_rebooting_drops_the_lease() {
    for state in [State::Renewing, State::Rebinding, State::Rebooting] {
        let (mut client, _) = bound(config(), 3600);
        let held = record(&client);
        let mut client = if state == State::Rebooting {
            Client::resume(config(), held.clone(), held.obtained_at, SEED)
        } else {
            client.on_timeout(held.renew_at);
            if state == State::Rebinding {
                client.on_timeout(held.rebind_at);
            }
            client
        };
        let actions = if state == State::Rebooting {
            client.start(held.obtained_at)
        } else {
            Vec::new()
        };
        let request = match sent(&actions).first() {
            Some(tx) => decode(tx),
            None => {
                // Re-send to learn the current xid's request.
                let now = client.deadline().unwrap();
                let actions = client.on_timeout(now);
                decode(sent(&actions)[0])
            }
        };
        assert_eq!(client.state(), state);
        let nak = ReplyBuilder::to(&request, MessageType::Nak).bytes();
        let actions = client.on_reply(held.rebind_at, &nak, meta());
        assert_eq!(client.state(), State::Init, "{state}");
        assert!(client.record().is_none());
        assert!(actions.contains(&Action::ClearRecord));
        assert!(events(&actions).contains(&&ClientEvent::Nak {
            server: SERVER_ID,
            message: None,
            state
        }));

        // The next lease has a different address: reported as IpChanged.
        let (now, actions) = advance_to_deadline(&mut client);
        let (_, discover) = only_sent(&actions);
        let new_ip = Ipv4Addr::new(10, 9, 0, 77);
        let offer = ReplyBuilder::to(&discover, MessageType::Offer)
            .yiaddr(new_ip)
            .bytes();
        let (_, request) = only_sent(&client.on_reply(now, &offer, meta()));
        let ack = ReplyBuilder::to(&request, MessageType::Ack)
            .yiaddr(new_ip)
            .bytes();
        let actions = client.on_reply(now, &ack, meta());
        assert!(events(&actions).contains(&&ClientEvent::IpChanged {
            old: OFFERED_IP,
            new: new_ip
        }));
        assert!(events(&actions).iter().any(|e| matches!(
            e,
            ClientEvent::Bound { renewal: false, after_failures, .. } if *after_failures >= 1
        )));
    }
}

#[test]
fn hostile_replies_are_rejected_without_any_state_change() {
    let mut client = Client::new(config(), SEED);
    let (_, discover) = only_sent(&client.start(t0()));
    let offer = ReplyBuilder::to(&discover, MessageType::Offer).bytes();
    let (_, request) = only_sent(&client.on_reply(t0(), &offer, meta()));
    let good = || ReplyBuilder::to(&request, MessageType::Ack);
    let mut truncated = good().bytes();
    truncated.truncate(200);
    let mut bad_cookie = good().bytes();
    bad_cookie[236] = 0;
    let mut overrun = good().bytes();
    let end = overrun.len() - 1;
    overrun[end] = 61; // a client id option whose length byte is missing
    let hostile: Vec<(Vec<u8>, RejectCheck)> = vec![
        (good().xid(request.xid() ^ 1).bytes(), |r| {
            matches!(r, RejectReason::WrongXid { .. })
        }),
        (good().chaddr(MacAddr([2, 0, 0, 0, 0, 9])).bytes(), |r| {
            matches!(r, RejectReason::WrongChaddr { .. })
        }),
        (
            good()
                .option(DhcpOption::ClientIdentifier(vec![1, 2, 3]))
                .bytes(),
            |r| *r == RejectReason::ClientIdMismatch,
        ),
        (truncated, |r| {
            matches!(r, RejectReason::Truncated { len: 200 })
        }),
        (vec![0xde, 0xad, 0xbe, 0xef], |r| {
            matches!(r, RejectReason::Truncated { .. })
        }),
        (bad_cookie, |r| *r == RejectReason::BadMagicCookie),
        (overrun, |r| {
            *r == RejectReason::MalformedOption { code: 61 }
        }),
        (
            ReplyBuilder::to(&request, MessageType::Offer).bytes(),
            |r| matches!(r, RejectReason::UnexpectedMessageType { .. }),
        ),
        (
            good()
                .option(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 9, 0, 99)))
                .bytes(),
            |r| matches!(r, RejectReason::WrongServer { .. }),
        ),
        (good().without(OptionCode::ServerIdentifier).bytes(), |r| {
            matches!(r, RejectReason::WrongServer { got: None, .. })
        }),
        (good().without(OptionCode::AddressLeaseTime).bytes(), |r| {
            *r == RejectReason::MissingLeaseTime
        }),
        (good().lease(0).bytes(), |r| {
            *r == RejectReason::ZeroLeaseTime
        }),
        (good().yiaddr(Ipv4Addr::UNSPECIFIED).bytes(), |r| {
            matches!(r, RejectReason::WrongAddress { .. })
        }),
        (good().yiaddr(Ipv4Addr::new(10, 9, 0, 51)).bytes(), |r| {
            matches!(r, RejectReason::WrongAddress { .. })
        }),
        (
            good()
                .option(DhcpOption::SubnetMask(Ipv4Addr::UNSPECIFIED))
                .bytes(),
            |r| {
                matches!(
                    r,
                    RejectReason::UnusableAddress {
                        why: Unusable::PrefixZero,
                        ..
                    }
                )
            },
        ),
        (good().without(OptionCode::MessageType).bytes(), |r| {
            *r == RejectReason::MissingMessageType
        }),
        (
            good()
                .option(DhcpOption::MessageType(MessageType::Inform))
                .bytes(),
            |r| matches!(r, RejectReason::UnexpectedMessageType { .. }),
        ),
    ];
    let deadline = client.deadline();
    for (index, (payload, expected)) in hostile.iter().enumerate() {
        let actions = client.on_reply(t0(), payload, meta());
        let [Action::Event(ClientEvent::Rejected { reason })] = actions.as_slice() else {
            panic!("case {index}: expected one Rejected event, got {actions:#?}");
        };
        assert!(expected(reason), "case {index}: {reason:?}");
        assert_eq!(client.state(), State::Requesting, "case {index}");
        assert_eq!(client.deadline(), deadline, "case {index}");
        assert!(client.record().is_none());
    }
    // A request echoed back (op BOOTREQUEST) is not a reply either.
    let echoed = sent(&client.on_timeout(deadline.unwrap()))[0]
        .payload
        .clone();
    let actions = client.on_reply(t0(), &echoed, meta());
    assert!(matches!(
        actions.as_slice(),
        [Action::Event(ClientEvent::Rejected {
            reason: RejectReason::NotBootReply { op: 1 }
        })]
    ));
    // After all that, the genuine ACK still binds.
    client.on_reply(t0(), &good().bytes(), meta());
    assert_eq!(client.state(), State::Bound);
}

#[test]
fn replies_without_client_id_echo_are_accepted() {
    let (client, _) = bind_with(config(), |request| {
        ReplyBuilder::to(request, MessageType::Ack).without(OptionCode::ClientIdentifier)
    });
    assert_eq!(record(&client).ip, OFFERED_IP);
}

#[test]
fn offer_without_server_id_is_rejected_in_selecting() {
    let mut client = Client::new(config(), SEED);
    let (_, discover) = only_sent(&client.start(t0()));
    let offer = ReplyBuilder::to(&discover, MessageType::Offer)
        .without(OptionCode::ServerIdentifier)
        .bytes();
    let actions = client.on_reply(t0(), &offer, meta());
    assert!(matches!(
        actions.as_slice(),
        [Action::Event(ClientEvent::Rejected {
            reason: RejectReason::MissingServerId
        })]
    ));
    let ack = ReplyBuilder::to(&discover, MessageType::Ack).bytes();
    let actions = client.on_reply(t0(), &ack, meta());
    assert!(matches!(
        actions.as_slice(),
        [Action::Event(ClientEvent::Rejected {
            reason: RejectReason::UnexpectedMessageType { .. }
        })]
    ));
    assert_eq!(client.state(), State::Selecting);
}

#[test]
fn bound_client_rejects_stray_replies() {
    let (mut client, _) = bound(config(), 3600);
    let deadline = client.deadline();
    let actions = client.on_reply(t0(), &[0u8; 300], meta());
    assert_eq!(
        actions,
        vec![Action::Event(ClientEvent::Rejected {
            reason: RejectReason::NotExpectingReplies
        })]
    );
    assert_eq!(
        (client.state(), client.deadline()),
        (State::Bound, deadline)
    );
}

#[test]
fn resume_with_a_valid_record_reboots_with_a_request_never_a_discover() {
    let (client, _) = bound(config(), 3600);
    let held = record(&client);
    let now = held.obtained_at + TimeDelta::seconds(100);
    let mut client = Client::resume(config(), held.clone(), now, 7);
    assert_eq!(client.state(), State::InitReboot);
    let actions = client.start(now);
    let (tx, request) = only_sent(&actions);
    assert_eq!(client.state(), State::Rebooting);
    assert_init_reboot_form(&tx, &request, held.ip);
    assert_eq!(request.xid(), client.xid());

    let ack = ReplyBuilder::to(&request, MessageType::Ack)
        .lease(3600)
        .bytes();
    let actions = client.on_reply(now + secs(0.01), &ack, meta());
    assert_eq!(client.state(), State::Bound);
    let renewed = record(&client);
    assert_eq!(renewed.expires_at, now + TimeDelta::seconds(3600));
    assert!(actions.contains(&Action::Persist(renewed.clone())));
    assert!(events(&actions).contains(&&ClientEvent::Bound {
        record: renewed,
        renewal: true,
        after_failures: 0
    }));
}

#[test]
fn resume_with_an_expired_record_starts_over_and_reports_the_expiry() {
    let (client, _) = bound(config(), 3600);
    let held = record(&client);
    let mut client = Client::resume(config(), held.clone(), held.expires_at, 7);
    assert_eq!(client.state(), State::Init);
    let actions = client.start(held.expires_at);
    assert!(actions.contains(&Action::ClearRecord));
    assert!(events(&actions).contains(&&ClientEvent::Expired { ip: held.ip }));
    let (_, discover) = only_sent(&actions);
    assert_eq!(msg_type(&discover), MessageType::Discover);
    assert_eq!(requested_ip(&discover), Some(held.ip));
}

#[test]
fn unanswered_init_reboot_keeps_the_recorded_lease() {
    let (client, _) = bound(config(), 3600);
    let held = record(&client);

    // Resumed well before T1: three REQUESTs, then back to BOUND on the recorded times.
    let now = held.obtained_at + TimeDelta::seconds(10);
    let mut client = Client::resume(config(), held.clone(), now, 7);
    let mut requests = sent(&client.start(now)).len();
    let actions = loop {
        let (_, actions) = advance_to_deadline(&mut client);
        if client.state() != State::Rebooting {
            break actions;
        }
        let (tx, msg) = only_sent(&actions);
        assert_init_reboot_form(&tx, &msg, held.ip);
        requests += 1;
    };
    assert_eq!(requests, 3);
    assert!(
        sent(&actions).is_empty(),
        "no DISCOVER while the record is valid"
    );
    assert!(events(&actions).contains(&&ClientEvent::GaveUp { ip: held.ip }));
    assert!(!actions.contains(&Action::ClearRecord));
    assert_eq!(client.state(), State::Bound);
    assert_eq!(client.record(), Some(&held));
    assert_eq!(client.deadline(), Some(held.renew_at));

    // Resumed after T1: gives up into RENEWING and renews right away.
    let now = held.renew_at + TimeDelta::seconds(1);
    let mut client = Client::resume(config(), held.clone(), now, 7);
    client.start(now);
    let actions = loop {
        let (_, actions) = advance_to_deadline(&mut client);
        if client.state() != State::Rebooting {
            break actions;
        }
    };
    assert_eq!(client.state(), State::Renewing);
    let (tx, msg) = only_sent(&actions);
    assert_init_reboot_form(&tx, &msg, held.ip);

    // Resumed after T2: REBINDING.
    let now = held.rebind_at + TimeDelta::seconds(1);
    let mut client = Client::resume(config(), held.clone(), now, 7);
    client.start(now);
    while client.state() == State::Rebooting {
        let (_, actions) = advance_to_deadline(&mut client);
        assert!(
            sent(&actions)
                .iter()
                .all(|tx| decode(tx).opts().msg_type() == Some(MessageType::Request))
        );
    }
    assert_eq!(client.state(), State::Rebinding);
}

#[test]
fn arp_probe_conflict_declines_then_discovers_after_the_backoff() {
    let mut cfg = config();
    cfg.arp_probe = true;
    let mut client = Client::new(cfg, SEED);
    let (_, discover) = only_sent(&client.start(t0()));
    let offer = ReplyBuilder::to(&discover, MessageType::Offer).bytes();
    let (_, request) = only_sent(&client.on_reply(t0(), &offer, meta()));
    let ack = ReplyBuilder::to(&request, MessageType::Ack).bytes();
    let actions = client.on_reply(t0(), &ack, meta());
    assert_eq!(client.state(), State::Probing);
    assert!(actions.contains(&Action::Probe(OFFERED_IP)));
    assert!(!actions.iter().any(|a| matches!(a, Action::Persist(_))));
    assert_eq!(client.deadline(), None);

    let now = t0() + secs(1.0);
    let actions = client.on_probe_result(now, true);
    let (tx, decline) = only_sent(&actions);
    assert_eq!(tx.kind, MessageKind::Decline);
    assert_broadcast_from_nowhere(&tx);
    assert_eq!(msg_type(&decline), MessageType::Decline);
    assert_eq!(decline.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(requested_ip(&decline), Some(OFFERED_IP));
    assert_eq!(server_id(&decline), Some(SERVER_ID));
    assert!(decline.opts().get(OptionCode::ClientIdentifier).is_some());
    assert!(
        decline.opts().get(OptionCode::Hostname).is_none(),
        "RFC 2131 table 5"
    );
    assert!(events(&actions).contains(&&ClientEvent::Declined { ip: OFFERED_IP }));
    assert_eq!(client.state(), State::Init);
    assert_eq!(client.deadline(), Some(now + TimeDelta::seconds(10)));
    assert!(client.on_timeout(now + secs(9.9)).is_empty());

    let (_, actions) = advance_to_deadline(&mut client);
    let (_, again) = only_sent(&actions);
    assert_eq!(msg_type(&again), MessageType::Discover);
    assert_eq!(
        requested_ip(&again),
        None,
        "never asks for the declined address"
    );
    assert_eq!(client.state(), State::Selecting);
}

#[test]
fn arp_probe_clear_binds() {
    let mut cfg = config();
    cfg.arp_probe = true;
    let mut client = Client::new(cfg, SEED);
    let (_, discover) = only_sent(&client.start(t0()));
    let offer = ReplyBuilder::to(&discover, MessageType::Offer).bytes();
    let (_, request) = only_sent(&client.on_reply(t0(), &offer, meta()));
    client.on_reply(
        t0(),
        &ReplyBuilder::to(&request, MessageType::Ack).bytes(),
        meta(),
    );
    let actions = client.on_probe_result(t0() + secs(1.0), false);
    assert_eq!(client.state(), State::Bound);
    assert!(sent(&actions).is_empty());
    let held = record(&client);
    assert_eq!(
        held.obtained_at,
        t0(),
        "the lease still counts from the REQUEST"
    );
    assert!(actions.contains(&Action::Persist(held)));
}

#[test]
fn release_from_bound_in_both_forms_then_silence() {
    for ip_assigned in [false, true] {
        let mut cfg = config();
        cfg.ip_assigned = ip_assigned;
        let (mut client, now) = bound(cfg, 3600);
        let actions = client.release(now + secs(5.0));
        let (tx, release) = only_sent(&actions);
        assert_eq!(tx.kind, MessageKind::Release);
        assert_eq!(msg_type(&release), MessageType::Release);
        assert_eq!(release.ciaddr(), OFFERED_IP);
        assert_eq!(server_id(&release), Some(SERVER_ID));
        assert_eq!(requested_ip(&release), None);
        assert!(release.opts().get(OptionCode::ClientIdentifier).is_some());
        assert_eq!(tx.src_ip, OFFERED_IP);
        if ip_assigned {
            assert_eq!(
                (tx.dst_ip, tx.l2_dest),
                (SERVER_ID, L2Dest::Unicast(SERVER_MAC))
            );
        } else {
            assert_eq!(
                (tx.dst_ip, tx.l2_dest),
                (Ipv4Addr::BROADCAST, L2Dest::Broadcast)
            );
        }
        assert!(actions.contains(&Action::ClearRecord));
        assert!(events(&actions).contains(&&ClientEvent::Released { ip: OFFERED_IP }));
        assert_eq!(client.state(), State::Released);
        assert_eq!(client.deadline(), None);
        assert!(client.record().is_none());
        let far = now + TimeDelta::days(30);
        assert!(client.on_timeout(far).is_empty());
        assert!(client.release(far).is_empty());
        assert!(client.start(far).is_empty());
        assert!(sent(&client.on_reply(far, &[0; 10], meta())).is_empty());
    }
}

#[test]
fn release_before_any_lease_sends_nothing() {
    let mut client = Client::new(config(), SEED);
    client.start(t0());
    let actions = client.release(t0());
    assert!(sent(&actions).is_empty());
    assert_eq!(client.state(), State::Released);
}

#[test]
fn stop_keeps_the_record_and_goes_silent() {
    let (mut client, now) = bound(config(), 3600);
    let actions = client.stop();
    assert!(!actions.contains(&Action::ClearRecord));
    assert_eq!(client.state(), State::Stopped);
    assert!(client.record().is_some());
    assert_eq!(client.deadline(), None);
    assert!(client.on_timeout(now + TimeDelta::days(1)).is_empty());
}

#[test]
fn scale_compresses_every_wait() {
    let mut cfg = config();
    cfg.timing.scale = 1000.0;
    let mut client = Client::new(cfg, SEED);
    let now = t0();
    let (_, discover) = only_sent(&client.start(now));
    let first_retry = as_secs(client.deadline().unwrap() - now);
    assert!((0.003..=0.005).contains(&first_retry), "{first_retry}");
    let offer = ReplyBuilder::to(&discover, MessageType::Offer).bytes();
    let (_, request) = only_sent(&client.on_reply(now, &offer, meta()));
    client.on_reply(
        now,
        &ReplyBuilder::to(&request, MessageType::Ack)
            .lease(3600)
            .bytes(),
        meta(),
    );
    let held = record(&client);
    assert!((as_secs(held.renew_at - now) - 1.8).abs() <= 0.002);
    assert!((as_secs(held.rebind_at - now) - 3.15).abs() <= 0.002);
    assert_eq!(held.expires_at - now, TimeDelta::milliseconds(3600));
    assert_eq!(
        held.lease_seconds, 3600,
        "the record keeps the server's value"
    );

    // The renew retry minimum shrinks too: 60 s -> 60 ms.
    let (t1, _) = advance_to_deadline(&mut client);
    let mut now = t1;
    while client.state() == State::Renewing {
        let deadline = client.deadline().unwrap();
        let wait = deadline - now;
        assert!(
            wait >= TimeDelta::milliseconds(60) || deadline == held.rebind_at,
            "{wait}"
        );
        client.on_timeout(deadline);
        now = deadline;
    }
    assert_eq!(client.state(), State::Rebinding);
}

#[test]
fn same_seed_same_behaviour() {
    let run = |seed| {
        let mut client = Client::new(config(), seed);
        let actions = client.start(t0());
        (client.xid(), client.deadline(), actions)
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1).0, run(2).0);
}

#[test]
fn optional_identity_options_are_sent_when_configured() {
    let mut cfg = config();
    cfg.fqdn = Some("web.default.lab.test".into());
    cfg.vendor_class = Some("dhcpmanager".into());
    cfg.client_id = super::config::ClientIdMode::Mac;
    cfg.broadcast_flag = false;
    cfg.extra_options = vec![(77, b"k8s".to_vec())];
    let mut client = Client::new(cfg, SEED);
    let (_, discover) = only_sent(&client.start(t0()));
    let opts = discover.opts();
    assert!(!discover.flags().broadcast());
    assert_eq!(
        opts.get(OptionCode::ClientIdentifier),
        Some(&DhcpOption::ClientIdentifier(vec![1, 2, 0xdc, 0, 0, 0, 1]))
    );
    assert_eq!(
        opts.get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"dhcpmanager".to_vec()))
    );
    let Some(DhcpOption::ClientFQDN(fqdn)) = opts.get(OptionCode::ClientFQDN) else {
        panic!("no option 81");
    };
    assert!(fqdn.flags().s() && fqdn.flags().e() && !fqdn.flags().n());
    assert_eq!(fqdn.domain().to_string(), "web.default.lab.test.");
    let Some(DhcpOption::UserClass(user_class)) = opts.get(OptionCode::UserClass) else {
        panic!("no option 77: {opts:?}");
    };
    assert_eq!(user_class, b"k8s");
    // Replies must echo the MAC-style id now; a Stable-style one is foreign.
    let stable = super::options::client_id_bytes(&super::config::ClientIdMode::Stable, CLIENT_MAC);
    let foreign = ReplyBuilder::to(&discover, MessageType::Offer)
        .option(DhcpOption::ClientIdentifier(stable))
        .bytes();
    assert!(matches!(
        client.on_reply(t0(), &foreign, meta()).as_slice(),
        [Action::Event(ClientEvent::Rejected {
            reason: RejectReason::ClientIdMismatch
        })]
    ));
    let offer = ReplyBuilder::to(&discover, MessageType::Offer).bytes();
    assert_eq!(sent(&client.on_reply(t0(), &offer, meta())).len(), 1);
    assert_eq!(client.state(), State::Requesting);
}

#[test]
fn events_serialize_with_an_event_tag() {
    let (client, _) = bound(config(), 3600);
    let bound = ClientEvent::Bound {
        record: record(&client),
        renewal: false,
        after_failures: 2,
    };
    let json = serde_json::to_value(&bound).unwrap();
    assert_eq!(json["event"], "bound");
    assert_eq!(json["afterFailures"], 2);
    assert_eq!(json["record"]["ip"], "10.9.0.50");
    let nak = ClientEvent::Nak {
        server: SERVER_ID,
        message: None,
        state: State::Renewing,
    };
    assert_eq!(serde_json::to_value(&nak).unwrap()["state"], "RENEWING");
    let rejected = ClientEvent::Rejected {
        reason: RejectReason::WrongXid {
            expected: 1,
            got: 2,
        },
    };
    let json = serde_json::to_value(&rejected).unwrap();
    assert_eq!(json["event"], "rejected");
    assert_eq!(json["reason"]["reason"], "wrongXid");
    let changed = serde_json::to_value(ClientEvent::StateChanged {
        from: State::InitReboot,
        to: State::Rebooting,
    })
    .unwrap();
    assert_eq!(changed["from"], "INIT-REBOOT");
}

/// Property: random and mutated datagrams in every receiving state never panic and never change
/// anything unless they were accepted.
#[test]
fn random_bytes_never_panic_or_move_the_client() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(99);
    let (bound_client, _) = bound(config(), 3600);
    let held = record(&bound_client);
    for state in [
        State::Selecting,
        State::Requesting,
        State::Rebooting,
        State::Renewing,
        State::Bound,
    ] {
        let mut client = match state {
            State::Rebooting | State::Renewing | State::Bound => {
                Client::resume(config(), held.clone(), held.obtained_at, 1)
            }
            _ => Client::new(config(), 1),
        };
        let (_, first) = only_sent(&client.start(held.obtained_at));
        match state {
            State::Requesting => {
                let offer = ReplyBuilder::to(&first, MessageType::Offer).bytes();
                client.on_reply(held.obtained_at, &offer, meta());
            }
            State::Renewing => {
                let ack = ReplyBuilder::to(&first, MessageType::Ack).bytes();
                client.on_reply(held.obtained_at, &ack, meta());
                client.on_timeout(client.deadline().unwrap());
            }
            State::Bound => {
                let ack = ReplyBuilder::to(&first, MessageType::Ack).bytes();
                client.on_reply(held.obtained_at, &ack, meta());
            }
            _ => {}
        }
        assert_eq!(client.state(), state);
        let template = ReplyBuilder::to(&first, MessageType::Ack)
            .xid(client.xid())
            .bytes();
        let mut rejected = 0;
        for _ in 0..3000 {
            let mut payload = if rng.random_bool(0.5) {
                template.clone()
            } else {
                let len = rng.random_range(0..600);
                (0..len).map(|_| rng.random()).collect()
            };
            for _ in 0..rng.random_range(0..4) {
                if !payload.is_empty() {
                    let at = rng.random_range(0..payload.len());
                    payload[at] = rng.random();
                }
            }
            payload.truncate(rng.random_range(0..=payload.len()));
            // A fresh copy per datagram, so every one meets the state under test.
            let mut probe = client.clone();
            let actions = probe.on_reply(held.obtained_at, &payload, meta());
            if matches!(
                actions.as_slice(),
                [Action::Event(ClientEvent::Rejected { .. })]
            ) {
                rejected += 1;
                assert_eq!(probe.state(), state);
                assert_eq!(probe.deadline(), client.deadline());
                assert_eq!(probe.record(), client.record());
                assert_eq!(probe.xid(), client.xid());
            }
        }
        assert!(rejected > 2000, "{state}: {rejected}");
    }
}

#[test]
fn client_can_move_between_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Client>();
    assert_send_sync::<Action>();
}

#[test]
fn a_requested_ip_goes_into_the_first_discover_and_a_different_offer_is_no_ip_change() {
    let wanted = Ipv4Addr::new(10, 77, 0, 99);
    let mut cfg = config();
    cfg.requested_ip = Some(wanted);
    let mut client = Client::new(cfg, SEED);
    let now = t0();
    let (_, discover) = only_sent(&client.start(now));
    assert_eq!(requested_ip(&discover), Some(wanted));

    // The server offers something else: taken, and not reported as an IP change.
    let offer = ReplyBuilder::to(&discover, MessageType::Offer).bytes();
    let (_, request) = only_sent(&client.on_reply(now, &offer, meta()));
    assert_eq!(requested_ip(&request), Some(OFFERED_IP));
    let ack = ReplyBuilder::to(&request, MessageType::Ack)
        .lease(3600)
        .bytes();
    let actions = client.on_reply(now, &ack, meta());
    assert_eq!(client.state(), State::Bound);
    assert!(
        !events(&actions)
            .iter()
            .any(|e| matches!(e, ClientEvent::IpChanged { .. })),
        "{actions:#?}"
    );
}

#[test]
fn the_address_last_held_wins_over_the_requested_ip() {
    let mut cfg = config();
    cfg.requested_ip = Some(Ipv4Addr::new(10, 77, 0, 99));
    let (client, _) = bound(cfg.clone(), 3600);
    let held = record(&client);
    let mut client = Client::resume(cfg, held.clone(), held.expires_at, 7);
    let (_, discover) = only_sent(&client.start(held.expires_at));
    assert_eq!(requested_ip(&discover), Some(held.ip));
}

// --- hostile segment: whom to believe, and which addresses to refuse ----------------------------

/// A client in `state` for the lease of [`bound`], with the REQUEST it just sent and the time.
fn exchanging_in(state: State) -> (Client, Message, DateTime<Utc>, LeaseRecord) {
    let (mut client, _) = bound(config(), 3600);
    let held = record(&client);
    let (now, actions) = match state {
        State::Requesting => {
            let mut client = Client::new(config(), SEED);
            let (_, discover) = only_sent(&client.start(t0()));
            let offer = ReplyBuilder::to(&discover, MessageType::Offer).bytes();
            let (_, request) = only_sent(&client.on_reply(t0(), &offer, meta()));
            return (client, request, t0(), held);
        }
        State::Rebooting => {
            let now = held.obtained_at + TimeDelta::seconds(10);
            client = Client::resume(config(), held.clone(), now, SEED);
            (now, client.start(now))
        }
        State::Renewing => (held.renew_at, client.on_timeout(held.renew_at)),
        State::Rebinding => {
            client.on_timeout(held.renew_at);
            (held.rebind_at, client.on_timeout(held.rebind_at))
        }
        other => panic!("no exchange in {other}"),
    };
    let (_, request) = only_sent(&actions);
    assert_eq!(client.state(), state);
    (client, request, now, held)
}

/// Feeds `reply` and asserts it was refused for `expected` with nothing else changed.
fn assert_refused(client: &mut Client, now: DateTime<Utc>, reply: &[u8], expected: RejectCheck) {
    let (state, deadline, held) = (client.state(), client.deadline(), client.record().cloned());
    let actions = client.on_reply(now, reply, meta());
    let [Action::Event(ClientEvent::Rejected { reason })] = actions.as_slice() else {
        panic!("{state}: expected one Rejected event, got {actions:#?}");
    };
    assert!(expected(reason), "{state}: {reason:?}");
    assert_eq!(
        (client.state(), client.deadline(), client.record().cloned()),
        (state, deadline, held),
        "{state}: a refused reply changes nothing"
    );
}

const OTHER_SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const OTHER_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 66);

#[test]
fn renewing_takes_an_ack_only_from_the_lease_server_for_the_leased_address() {
    let (mut client, request, now, held) = exchanging_in(State::Renewing);
    let ack = || ReplyBuilder::to(&request, MessageType::Ack);
    let forged = ack().option(DhcpOption::ServerIdentifier(OTHER_SERVER));
    assert_refused(&mut client, now, &forged.bytes(), |r| {
        *r == RejectReason::WrongServer {
            expected: SERVER_ID,
            got: Some(OTHER_SERVER),
        }
    });
    // The attack: the forger moves the address onto its own IP.
    let moved = ack()
        .option(DhcpOption::ServerIdentifier(OTHER_SERVER))
        .yiaddr(OTHER_SERVER);
    assert_refused(&mut client, now, &moved.bytes(), |r| {
        matches!(r, RejectReason::WrongServer { .. })
    });
    assert_refused(&mut client, now, &ack().yiaddr(OTHER_IP).bytes(), |r| {
        *r == RejectReason::WrongAddress {
            expected: OFFERED_IP,
            got: OTHER_IP,
        }
    });
    let anonymous = ack().without(OptionCode::ServerIdentifier);
    assert_refused(&mut client, now, &anonymous.bytes(), |r| {
        matches!(r, RejectReason::WrongServer { got: None, .. })
    });
    // The real server's ACK still renews the same address.
    let actions = client.on_reply(now, &ack().bytes(), meta());
    assert_eq!(client.state(), State::Bound);
    assert_eq!(record(&client).ip, held.ip);
    assert!(
        events(&actions)
            .iter()
            .any(|e| matches!(e, ClientEvent::Bound { renewal: true, .. }))
    );
}

#[test]
fn rebinding_and_init_reboot_take_an_ack_from_any_server_only_for_the_leased_address() {
    for state in [State::Rebinding, State::Rebooting] {
        let (mut client, request, now, held) = exchanging_in(state);
        let ack = || ReplyBuilder::to(&request, MessageType::Ack);
        assert_refused(&mut client, now, &ack().yiaddr(OTHER_IP).bytes(), |r| {
            matches!(r, RejectReason::WrongAddress { got: OTHER_IP, .. })
        });
        let moved = ack()
            .option(DhcpOption::ServerIdentifier(OTHER_SERVER))
            .yiaddr(OTHER_SERVER);
        assert_refused(&mut client, now, &moved.bytes(), |r| {
            matches!(r, RejectReason::WrongAddress { .. })
        });
        let anonymous = ack().without(OptionCode::ServerIdentifier);
        assert_refused(&mut client, now, &anonymous.bytes(), |r| {
            *r == RejectReason::MissingServerId
        });
        // RFC 2131 4.4.5: in REBINDING (and INIT-REBOOT) any server may extend the lease; the
        // record then names that server for the next RENEWING.
        let other = ack().option(DhcpOption::ServerIdentifier(OTHER_SERVER));
        client.on_reply(now, &other.bytes(), meta());
        assert_eq!(client.state(), State::Bound, "{state}");
        let renewed = record(&client);
        assert_eq!(
            (renewed.ip, renewed.server_id),
            (held.ip, OTHER_SERVER),
            "{state}"
        );
    }
}

#[test]
fn requesting_takes_an_ack_only_for_the_offered_address() {
    let (mut client, request, now, _) = exchanging_in(State::Requesting);
    let ack = ReplyBuilder::to(&request, MessageType::Ack).yiaddr(OTHER_IP);
    assert_refused(&mut client, now, &ack.bytes(), |r| {
        matches!(r, RejectReason::WrongAddress { .. })
    });
}

#[test]
fn a_nak_counts_only_from_the_server_in_charge() {
    // REQUESTING: the selected server; RENEWING: the lease's server.
    for state in [State::Requesting, State::Renewing] {
        let (mut client, request, now, _) = exchanging_in(state);
        let nak = || ReplyBuilder::to(&request, MessageType::Nak);
        let foreign = nak().option(DhcpOption::ServerIdentifier(OTHER_SERVER));
        assert_refused(&mut client, now, &foreign.bytes(), |r| {
            *r == RejectReason::WrongServer {
                expected: SERVER_ID,
                got: Some(OTHER_SERVER),
            }
        });
        let anonymous = nak().without(OptionCode::ServerIdentifier);
        assert_refused(&mut client, now, &anonymous.bytes(), |r| {
            matches!(r, RejectReason::WrongServer { got: None, .. })
        });
        let actions = client.on_reply(now, &nak().bytes(), meta());
        assert_eq!(client.state(), State::Init, "{state}: {actions:#?}");
    }
    // INIT-REBOOT: another server's NAK is held back; an ACK before the next retransmission
    // wins (a forger racing the real server loses) ...
    let (mut client, request, now, held) = exchanging_in(State::Rebooting);
    let foreign = ReplyBuilder::to(&request, MessageType::Nak)
        .option(DhcpOption::ServerIdentifier(OTHER_SERVER))
        .bytes();
    assert_refused(&mut client, now, &foreign, |r| {
        matches!(r, RejectReason::WrongServer { .. })
    });
    let ack = ReplyBuilder::to(&request, MessageType::Ack).bytes();
    client.on_reply(now, &ack, meta());
    assert_eq!(client.state(), State::Bound);
    let (_, actions) = advance_to_deadline(&mut client);
    assert!(
        !events(&actions)
            .iter()
            .any(|e| matches!(e, ClientEvent::Nak { .. })),
        "the held-back NAK is forgotten once the lease is confirmed"
    );
    assert_eq!(record(&client).ip, held.ip);
    // ... and with nobody confirming the lease, it counts at the next retransmission: the
    // network or its server changed while we were down.
    let (mut client, request, now, _) = exchanging_in(State::Rebooting);
    let foreign = ReplyBuilder::to(&request, MessageType::Nak)
        .option(DhcpOption::ServerIdentifier(OTHER_SERVER))
        .bytes();
    client.on_reply(now, &foreign, meta());
    assert_eq!(client.state(), State::Rebooting);
    let (_, actions) = advance_to_deadline(&mut client);
    assert_eq!(client.state(), State::Init);
    assert!(actions.contains(&Action::ClearRecord));
    assert!(events(&actions).iter().any(|e| matches!(
        e,
        ClientEvent::Nak { server, state: State::Rebooting, .. } if *server == OTHER_SERVER
    )));
    // The lease's own server's NAK counts at once.
    let (mut client, request, now, _) = exchanging_in(State::Rebooting);
    let own = ReplyBuilder::to(&request, MessageType::Nak).bytes();
    client.on_reply(now, &own, meta());
    assert_eq!(client.state(), State::Init);

    // REBINDING: any server may NAK, but it must name itself.
    let (mut client, request, now, _) = exchanging_in(State::Rebinding);
    let nak = || ReplyBuilder::to(&request, MessageType::Nak);
    let anonymous = nak().without(OptionCode::ServerIdentifier);
    assert_refused(&mut client, now, &anonymous.bytes(), |r| {
        *r == RejectReason::MissingServerId
    });
    let other = nak().option(DhcpOption::ServerIdentifier(OTHER_SERVER));
    let actions = client.on_reply(now, &other.bytes(), meta());
    assert_eq!(client.state(), State::Init);
    assert!(actions.contains(&Action::ClearRecord));
}

/// One kind of bad address: the OFFER's yiaddr, mask and routers.
struct BadOffer {
    ip: Ipv4Addr,
    mask: Option<Ipv4Addr>,
    routers: Vec<Ipv4Addr>,
    why: Unusable,
}

fn bad_offers() -> Vec<BadOffer> {
    let slash24 = Some(Ipv4Addr::new(255, 255, 255, 0));
    let router = vec![Ipv4Addr::new(10, 9, 0, 254)];
    let bad = |ip: [u8; 4], mask: Option<Ipv4Addr>, routers: &Vec<Ipv4Addr>, why| BadOffer {
        ip: Ipv4Addr::from(ip),
        mask,
        routers: routers.clone(),
        why,
    };
    vec![
        bad([10, 9, 0, 0], slash24, &router, Unusable::NetworkAddress),
        bad(
            [10, 9, 0, 255],
            slash24,
            &router,
            Unusable::BroadcastAddress,
        ),
        bad([10, 9, 0, 1], slash24, &router, Unusable::ServerAddress),
        bad([10, 9, 0, 254], slash24, &router, Unusable::RouterAddress),
        bad([0, 0, 0, 7], slash24, &router, Unusable::ThisNetwork),
        bad([127, 0, 0, 5], slash24, &router, Unusable::Loopback),
        bad(
            [224, 0, 0, 5],
            slash24,
            &router,
            Unusable::MulticastOrReserved,
        ),
        bad(
            [240, 0, 0, 5],
            slash24,
            &router,
            Unusable::MulticastOrReserved,
        ),
        bad(
            [255, 255, 255, 255],
            slash24,
            &router,
            Unusable::MulticastOrReserved,
        ),
        bad(
            [10, 9, 0, 50],
            Some(Ipv4Addr::UNSPECIFIED),
            &router,
            Unusable::PrefixZero,
        ),
        bad(
            [10, 9, 0, 50],
            Some(Ipv4Addr::BROADCAST),
            &vec![],
            Unusable::HostRouteWithoutRouter,
        ),
    ]
}

#[test]
fn offers_of_unusable_addresses_are_ignored_with_the_reason() {
    let mut client = Client::new(config(), SEED);
    let (_, discover) = only_sent(&client.start(t0()));
    for bad in bad_offers() {
        let mut offer = ReplyBuilder::to(&discover, MessageType::Offer)
            .yiaddr(bad.ip)
            .without(OptionCode::SubnetMask)
            .option(DhcpOption::Router(bad.routers.clone()));
        if bad.routers.is_empty() {
            offer = offer.without(OptionCode::Router);
        }
        if let Some(mask) = bad.mask {
            offer = offer.option(DhcpOption::SubnetMask(mask));
        }
        let why = bad.why;
        let actions = client.on_reply(t0(), &offer.bytes(), meta());
        assert_eq!(
            actions,
            vec![Action::Event(ClientEvent::Rejected {
                reason: RejectReason::UnusableAddress {
                    yiaddr: bad.ip,
                    why
                }
            })],
            "{why:?}"
        );
        assert_eq!(client.state(), State::Selecting, "{why:?}");
    }
    // A /32 with a router is fine.
    let offer = ReplyBuilder::to(&discover, MessageType::Offer)
        .option(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 255)))
        .bytes();
    client.on_reply(t0(), &offer, meta());
    assert_eq!(client.state(), State::Requesting);
}

#[test]
fn acks_that_make_the_address_unusable_are_refused_in_every_state() {
    for state in [
        State::Requesting,
        State::Renewing,
        State::Rebinding,
        State::Rebooting,
    ] {
        let (mut client, request, now, _) = exchanging_in(state);
        let ack = || ReplyBuilder::to(&request, MessageType::Ack);
        let whole_internet = ack().option(DhcpOption::SubnetMask(Ipv4Addr::UNSPECIFIED));
        assert_refused(&mut client, now, &whole_internet.bytes(), |r| {
            matches!(
                r,
                RejectReason::UnusableAddress {
                    why: Unusable::PrefixZero,
                    ..
                }
            )
        });
        let router = ack().option(DhcpOption::Router(vec![OFFERED_IP]));
        assert_refused(&mut client, now, &router.bytes(), |r| {
            matches!(
                r,
                RejectReason::UnusableAddress {
                    why: Unusable::RouterAddress,
                    ..
                }
            )
        });
        let bare = ack()
            .without(OptionCode::SubnetMask)
            .without(OptionCode::Router);
        assert_refused(&mut client, now, &bare.bytes(), |r| {
            matches!(
                r,
                RejectReason::UnusableAddress {
                    why: Unusable::HostRouteWithoutRouter,
                    ..
                }
            )
        });
    }
}

#[test]
fn every_reject_reason_has_a_metric_label() {
    let reasons = [
        RejectReason::WrongServer {
            expected: SERVER_ID,
            got: None,
        },
        RejectReason::WrongAddress {
            expected: OFFERED_IP,
            got: OTHER_IP,
        },
        RejectReason::UnusableAddress {
            yiaddr: OTHER_IP,
            why: Unusable::NetworkAddress,
        },
        RejectReason::MissingServerId,
    ];
    let labels: Vec<_> = reasons.iter().map(RejectReason::label).collect();
    assert_eq!(
        labels,
        [
            "wrong_server",
            "wrong_address",
            "network_address",
            "missing_server_id"
        ]
    );
    assert!(reasons[..3].iter().all(RejectReason::is_suspicious));
}
