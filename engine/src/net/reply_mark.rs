//! Connection marks that send the replies of an announced address's connections back out of its
//! macvlan, also when kube-proxy DNATs them to a pod.
//!
//! kube-proxy rewrites the destination of a packet for a Service's ingress IP to a pod before the
//! routing decision, and the source of the pod's reply back to the ingress IP only after it
//! (conntrack's reverse NAT in POSTROUTING). The reply is routed with the pod's address as source,
//! so the `from <IP>` rule of [`super::announce`] never sees it, and it follows the main table:
//! out of the parent with the node's MAC when the node has an address of its own in the subnet.
//! So each announced address gets a mark of its own (`mark`, bits of `mask` only):
//!
//! - our nftables table (family `ip`, one per instance: `dhcpmanager-<owner>`) has one chain at
//!   `prerouting`, priority -150 (mangle: before kube-proxy's DNAT at -100), with two rules per
//!   address: `iif <macvlan> ct mark set ct mark & ~mask | mark` (a connection that came in on the
//!   macvlan) and `ct direction reply ct mark & mask == mark meta mark set meta mark & ~mask | mark`
//!   (its replies, whatever interface they arrive on: a pod's veth, a tunnel from another node);
//!   bits outside `mask` of both marks are kept;
//! - the rule `fwmark <mark>/<mask> lookup <the address's table>` ([`super::announce`]) routes
//!   the marked replies out of the macvlan.
//!
//! Only replies are marked: the first packet of a connection must still reach the pod through
//! the main table (the address's table has a default route out of the macvlan).
//!
//! The chain is rebuilt whole, in one transaction, from the addresses this instance marks now;
//! with none left, the table goes. Nothing outside our table is ever changed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use netlink_packet_core::{DefaultNla, NLM_F_APPEND, NLM_F_CREATE};
use netlink_packet_netfilter::NetfilterProtoFamily;
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, Expressions, Hook, HookNumber,
    InetHookNumber, ListAttribute, Meta, MetaKey, NfTablesMessage, Operator, Register,
    RuleAttribute, RuleMessage, TableAttribute, TableMessage,
};

use super::NetNs;
use super::nft::{Change, Nft, NftError};
use crate::instance::InstanceId;

/// Default mark bits (1-6: 63 addresses per node). Clear of kube-proxy (0xc000), CNI portmap
/// (0x2000), Calico (0xffff0000), Weave (0x60000), Tailscale (0xc0000), the AWS VPC CNI (0x80)
/// and Antrea (0x1); see docs/engine.md.
pub const DEFAULT_MARK_MASK: u32 = 0x0000_007e;
/// Our chain in our table.
pub const CHAIN: &str = "prerouting";
/// `NF_IP_PRI_MANGLE`: after conntrack (-200), before DNAT (-100).
const MANGLE_PRIORITY: i32 = -150;
/// `NF_INET_PRE_ROUTING`'s policy: accept (a base chain must have one).
const NF_ACCEPT: u32 = 1;

// nft_ct expression (include/uapi/linux/netfilter/nf_tables.h).
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_CT_SREG: u16 = 4;
const NFT_CT_DIRECTION: u32 = 1;
const NFT_CT_MARK: u32 = 3;
const IP_CT_DIR_REPLY: u8 = 1;
/// `NFTNL_UDATA_RULE_COMMENT`: what `nft list` shows as the rule's comment.
const UDATA_RULE_COMMENT: u8 = 0;

/// The name of `owner`'s table.
pub fn table_name(owner: &InstanceId) -> String {
    format!("dhcpmanager-{owner}")
}

/// The marks `mask` allows, smallest first (every non-empty combination of its bits).
pub fn marks_in(mask: u32) -> impl Iterator<Item = u32> {
    std::iter::successors(Some(0u32), move |v| {
        let next = (*v | !mask).wrapping_add(1) & mask;
        (next != 0).then_some(next)
    })
    .skip(1)
}

/// The smallest mark of `mask` not in `used`.
pub fn free_mark(mask: u32, used: impl Fn(u32) -> bool) -> Option<u32> {
    marks_in(mask).find(|m| !used(*m))
}

/// One address whose connections are marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marked {
    pub ip: Ipv4Addr,
    pub mark: u32,
}

/// The marks of one instance's announced addresses, kept in its nftables table.
#[derive(Debug)]
pub struct ReplyMarks {
    table: String,
    mask: u32,
    netns: NetNs,
    state: Mutex<State>,
    /// Held while a mark is picked and its `fwmark` rule added ([`super::announce`]).
    allocation: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    /// Opened on first use, in the instance's network namespace.
    nft: Option<Nft>,
    /// By the macvlan's ifindex.
    marked: BTreeMap<u32, Marked>,
}

impl ReplyMarks {
    pub fn new(owner: &InstanceId, mask: u32, netns: NetNs) -> Self {
        ReplyMarks {
            table: table_name(owner),
            mask,
            netns,
            state: Mutex::new(State::default()),
            allocation: tokio::sync::Mutex::new(()),
        }
    }

    /// Keeps other addresses of this instance from picking a mark until dropped.
    pub async fn allocating(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.allocation.lock().await
    }

    pub fn mask(&self) -> u32 {
        self.mask
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Marks the connections that come in on `ifindex` (and their replies) with `marked.mark`.
    pub fn mark(&self, ifindex: u32, marked: Marked) -> Result<(), NftError> {
        let mut state = self.lock();
        let before = state.marked.insert(ifindex, marked);
        if before == Some(marked) {
            return Ok(());
        }
        let result = self.write(&mut state);
        if result.is_err() {
            match before {
                Some(before) => state.marked.insert(ifindex, before),
                None => state.marked.remove(&ifindex),
            };
        }
        result
    }

    /// Stops marking for `ifindex`; the table goes with the last address. What the kernel kept
    /// after a failure goes with the next change that succeeds.
    pub fn unmark(&self, ifindex: u32) -> Result<(), NftError> {
        let mut state = self.lock();
        if state.marked.remove(&ifindex).is_none() {
            return Ok(());
        }
        self.write(&mut state)
    }

    /// Deletes our table, whatever it holds (left by an earlier run, or at the end of this one).
    pub fn remove_table(&self) -> Result<bool, NftError> {
        let mut state = self.lock();
        state.marked.clear();
        self.delete_table(&mut state)
    }

    fn write(&self, state: &mut State) -> Result<(), NftError> {
        if state.marked.is_empty() {
            return self.delete_table(state).map(|_| ());
        }
        let changes = chain_changes(&self.table, self.mask, &state.marked);
        self.nft(state)?.apply(&changes)
    }

    fn delete_table(&self, state: &mut State) -> Result<bool, NftError> {
        let delete = Change {
            family: NetfilterProtoFamily::IPv4,
            message: NfTablesMessage::DeleteTable(TableMessage {
                attributes: vec![TableAttribute::Name(self.table.clone())],
            }),
            flags: 0,
        };
        match self.nft(state)?.apply(&[delete]) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn nft<'a>(&self, state: &'a mut State) -> Result<&'a mut Nft, NftError> {
        if state.nft.is_none() {
            let opened = self
                .netns
                .run(Nft::open)
                .map_err(NftError::Open)
                .and_then(|r| r)?;
            state.nft = Some(opened);
        }
        Ok(state.nft.as_mut().expect("opened above"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One transaction that leaves our table with exactly the rules of `marked`: table and chain
/// created if missing, the chain flushed, the rules appended.
fn chain_changes(table: &str, mask: u32, marked: &BTreeMap<u32, Marked>) -> Vec<Change> {
    let change = |message, flags| Change {
        family: NetfilterProtoFamily::IPv4,
        message,
        flags,
    };
    let mut changes = vec![
        change(
            NfTablesMessage::NewTable(TableMessage {
                attributes: vec![TableAttribute::Name(table.to_owned())],
            }),
            NLM_F_CREATE,
        ),
        change(
            NfTablesMessage::NewChain(ChainMessage {
                attributes: vec![
                    ChainAttribute::Table(table.to_owned()),
                    ChainAttribute::Name(CHAIN.to_owned()),
                    ChainAttribute::Hook(vec![
                        Hook::Number(HookNumber::Inet(InetHookNumber::PreRouting)),
                        Hook::Priority(MANGLE_PRIORITY as u32),
                    ]),
                    ChainAttribute::Policy(NF_ACCEPT),
                    ChainAttribute::Type("filter".into()),
                ],
            }),
            NLM_F_CREATE,
        ),
        // A rule deletion naming only the chain flushes it.
        change(
            NfTablesMessage::DeleteRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(table.to_owned()),
                    RuleAttribute::Chain(CHAIN.to_owned()),
                ],
            }),
            0,
        ),
    ];
    for (ifindex, marked) in marked {
        for (expressions, what) in [
            (mark_connection(*ifindex, mask, marked.mark), "connection"),
            (mark_reply(mask, marked.mark), "reply"),
        ] {
            let comment = format!("dhcpmanager: {} {what}", marked.ip);
            changes.push(change(
                NfTablesMessage::NewRule(RuleMessage {
                    attributes: vec![
                        RuleAttribute::Table(table.to_owned()),
                        RuleAttribute::Chain(CHAIN.to_owned()),
                        RuleAttribute::Expressions(
                            expressions.into_iter().map(ListAttribute::from).collect(),
                        ),
                        RuleAttribute::UserData(comment_udata(&comment)),
                    ],
                }),
                NLM_F_CREATE | NLM_F_APPEND,
            ));
        }
    }
    changes
}

/// `iif <ifindex> ct mark set ct mark & ~mask | mark`
fn mark_connection(ifindex: u32, mask: u32, mark: u32) -> Vec<Expressions> {
    vec![
        meta_load(MetaKey::Iif),
        compare_eq(ifindex.to_ne_bytes().to_vec()),
        ct_load(NFT_CT_MARK),
        keep_outside(mask, mark),
        ct_store(NFT_CT_MARK),
    ]
}

/// `ct direction reply ct mark & mask == mark meta mark set meta mark & ~mask | mark`
fn mark_reply(mask: u32, mark: u32) -> Vec<Expressions> {
    vec![
        ct_load(NFT_CT_DIRECTION),
        compare_eq(vec![IP_CT_DIR_REPLY]),
        ct_load(NFT_CT_MARK),
        Expressions::Bitwise(vec![
            Bitwise::SourceRegister(Register::Reg1),
            Bitwise::DestinationRegister(Register::Reg1),
            Bitwise::Length(4),
            Bitwise::Mask(DataAttribute::Value(mask.to_ne_bytes().to_vec())),
            Bitwise::Xor(DataAttribute::Value(0u32.to_ne_bytes().to_vec())),
        ]),
        compare_eq(mark.to_ne_bytes().to_vec()),
        meta_load(MetaKey::Mark),
        keep_outside(mask, mark),
        Expressions::Meta(vec![
            Meta::Key(MetaKey::Mark),
            Meta::SourceRegister(Register::Reg1),
        ]),
    ]
}

fn meta_load(key: MetaKey) -> Expressions {
    Expressions::Meta(vec![
        Meta::Key(key),
        Meta::DestinationRegister(Register::Reg1),
    ])
}

fn compare_eq(data: Vec<u8>) -> Expressions {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(Operator::Equal),
        Cmp::Data(DataAttribute::Value(data)),
    ])
}

/// reg1 = reg1 & ~mask ^ mark: the bits outside `mask` stay, ours become `mark`.
fn keep_outside(mask: u32, mark: u32) -> Expressions {
    Expressions::Bitwise(vec![
        Bitwise::SourceRegister(Register::Reg1),
        Bitwise::DestinationRegister(Register::Reg1),
        Bitwise::Length(4),
        Bitwise::Mask(DataAttribute::Value((!mask).to_ne_bytes().to_vec())),
        Bitwise::Xor(DataAttribute::Value(mark.to_ne_bytes().to_vec())),
    ])
}

fn ct_load(key: u32) -> Expressions {
    Expressions::Other {
        expression_type: "ct".into(),
        attributes: vec![
            DefaultNla::new(NFTA_CT_KEY, key.to_be_bytes().to_vec()),
            DefaultNla::new(
                NFTA_CT_DREG,
                u32::from(Register::Reg1).to_be_bytes().to_vec(),
            ),
        ],
    }
}

fn ct_store(key: u32) -> Expressions {
    Expressions::Other {
        expression_type: "ct".into(),
        attributes: vec![
            DefaultNla::new(NFTA_CT_KEY, key.to_be_bytes().to_vec()),
            DefaultNla::new(
                NFTA_CT_SREG,
                u32::from(Register::Reg1).to_be_bytes().to_vec(),
            ),
        ],
    }
}

/// nft's rule user data with one comment (type, length, NUL-terminated text).
fn comment_udata(comment: &str) -> Vec<u8> {
    let text: Vec<u8> = comment.bytes().take(127).chain([0]).collect();
    let mut udata = vec![UDATA_RULE_COMMENT, text.len() as u8];
    udata.extend(text);
    udata
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Nla;

    #[test]
    fn marks_are_the_combinations_of_the_mask_bits_smallest_first() {
        let marks: Vec<u32> = marks_in(0x7e).collect();
        assert_eq!(marks.len(), 63);
        assert_eq!(&marks[..3], &[0x2, 0x4, 0x6]);
        assert_eq!(marks.last(), Some(&0x7e));
        assert!(marks.iter().all(|m| m & !0x7e == 0));
        // Bits need not be contiguous.
        assert_eq!(
            marks_in(0x0101_0000).collect::<Vec<_>>(),
            vec![0x0001_0000, 0x0100_0000, 0x0101_0000]
        );
        assert_eq!(marks_in(0).count(), 0);
    }

    #[test]
    fn the_free_mark_is_the_smallest_unused_and_none_when_all_are_taken() {
        assert_eq!(free_mark(0x7e, |_| false), Some(0x2));
        assert_eq!(free_mark(0x7e, |m| m == 0x2 || m == 0x6), Some(0x4));
        assert_eq!(free_mark(0x6, |_| true), None);
    }

    #[test]
    fn the_default_mask_avoids_kube_proxy_and_calico() {
        assert_eq!(
            DEFAULT_MARK_MASK & 0xc000,
            0,
            "kube-proxy's masquerade and drop bits"
        );
        assert_eq!(DEFAULT_MARK_MASK & 0xffff_0000, 0, "Calico's default mask");
        assert_eq!(DEFAULT_MARK_MASK & 0x2000, 0, "CNI portmap");
    }

    #[test]
    fn the_table_is_named_after_the_owner() {
        let owner = InstanceId::new("agent-node-1").unwrap();
        assert_eq!(table_name(&owner), "dhcpmanager-agent-node-1");
    }

    #[test]
    fn one_transaction_rebuilds_the_chain_with_two_rules_per_address() {
        let mut marked = BTreeMap::new();
        for (ifindex, mark) in [(7, 0x2), (9, 0x4)] {
            marked.insert(
                ifindex,
                Marked {
                    ip: Ipv4Addr::new(10, 0, 0, ifindex as u8),
                    mark,
                },
            );
        }
        let changes = chain_changes("dhcpmanager-x", 0x7e, &marked);
        assert_eq!(changes.len(), 3 + 4);
        assert!(matches!(changes[0].message, NfTablesMessage::NewTable(_)));
        assert!(matches!(changes[1].message, NfTablesMessage::NewChain(_)));
        assert!(matches!(changes[2].message, NfTablesMessage::DeleteRule(_)));
        assert!(
            changes
                .iter()
                .all(|c| c.family == NetfilterProtoFamily::IPv4)
        );
        // The connection rule of ifindex 7 compares the input interface with 7 and sets
        // ct mark = ct mark & ~0x7e ^ 0x2.
        let connection = mark_connection(7, 0x7e, 0x2);
        assert_eq!(connection[1], compare_eq(7u32.to_ne_bytes().to_vec()));
        assert_eq!(connection[3], keep_outside(0x7e, 0x2));
        assert!(matches!(
            &connection[4],
            Expressions::Other { expression_type, attributes }
                if expression_type == "ct" && attributes[1].kind() == NFTA_CT_SREG
        ));
    }

    #[test]
    fn comments_are_nft_user_data() {
        assert_eq!(comment_udata("ab"), vec![0, 3, b'a', b'b', 0]);
    }
}
