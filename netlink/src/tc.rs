//! Traffic control: a link's ingress qdisc and the filters on it that
//! redirect every packet to another link. This is how a container's
//! interface is spliced to the tap device of its VM, in both directions:
//!
//! ```text
//! tc qdisc add dev FROM handle ffff: ingress
//! tc filter add dev FROM parent ffff: protocol all u32 match u8 0 0 \
//!     action mirred egress redirect dev TO
//! ```
//!
//! The filter is u32 with one key of mask 0 (it matches everything)
//! rather than matchall, because u32 is the classifier every kernel we
//! meet has built in (`CONFIG_NET_CLS_U32`; `cls_matchall` is often a
//! module or missing).
//!
//! Trust: the kernel's replies, decoded by `netlink-packet-route`; a filter
//! dump is searched for mirred redirects of u32 and matchall filters only.
//!
//! Constants: `TC_H_INGRESS` and `TC_ACT_STOLEN` from
//! `include/uapi/linux/pkt_sched.h` and `pkt_cls.h`, `TCA_EGRESS_REDIR`
//! from `include/uapi/linux/tc_act/tc_mirred.h`, `ETH_P_ALL` from
//! `include/uapi/linux/if_ether.h`.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirror, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterMatchAllOption, TcFilterU32, TcFilterU32Option, TcHandle,
    TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::{Netlink, NetlinkError};

/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// Every protocol (`protocol all`).
const ETH_P_ALL: u16 = 0x0003;
const INGRESS_KIND: &str = "ingress";

impl Netlink {
    /// Adds the ingress qdisc (handle ffff:, parent TC_H_INGRESS) to a
    /// link; `EEXIST` if it has one (or a clsact qdisc).
    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc_message(index, true)),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("adding the ingress qdisc to link {index}"),
        )
    }

    /// Deletes a link's ingress qdisc, and with it its filters.
    pub fn delete_ingress_qdisc(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc_message(index, false)),
            0,
            || format!("deleting the ingress qdisc of link {index}"),
        )
    }

    /// On `from`'s ingress qdisc, a filter that matches every packet (u32,
    /// protocol all, one key of mask 0 and value 0) whose action is
    /// `mirred egress redirect` to link `to` (TCA_EGRESS_REDIR, TC_ACT_STOLEN).
    /// The kernel picks the filter's priority, so redirects added later
    /// come after the earlier ones.
    pub fn add_redirect(&mut self, from: u32, to: u32) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::NewTrafficFilter(redirect_filter_message(from, to)),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("adding a redirect from link {from} to link {to}"),
        )
    }

    /// The link indexes that `from`'s ingress filters redirect to (a
    /// RTM_GETTFILTER dump on parent ffff:), in the kernel's order; empty
    /// when it has no ingress qdisc.
    pub fn redirects(&mut self, from: u32) -> Result<Vec<u32>, NetlinkError> {
        let mut request = TcMessage::with_index(tc_index(from));
        request.header.parent = INGRESS_HANDLE;
        let found = self.dump(
            RouteNetlinkMessage::GetTrafficFilter(request),
            || format!("listing the ingress filters of link {from}"),
            |_, message| match message {
                RouteNetlinkMessage::NewTrafficFilter(message) => Some(redirect_targets(&message)),
                _ => None,
            },
        )?;
        Ok(found.into_iter().flatten().collect())
    }
}

/// `tcm_ifindex` is an `int`: an index past `i32::MAX` (none is) becomes
/// 0, which the kernel refuses, rather than a negative one (-1 is
/// `TCM_IFINDEX_MAGIC_BLOCK`).
fn tc_index(index: u32) -> i32 {
    i32::try_from(index).unwrap_or(0)
}

/// The ingress qdisc of link `index`: `ffff:`, parent `TC_H_INGRESS`;
/// with its (empty) options when adding it, as tc sends them.
pub(crate) fn ingress_qdisc_message(index: u32, adding: bool) -> TcMessage {
    let mut message = TcMessage::with_index(tc_index(index));
    message.header.handle = INGRESS_HANDLE;
    message.header.parent = TcHandle::INGRESS;
    message
        .attributes
        .push(TcAttribute::Kind(INGRESS_KIND.to_string()));
    if adding {
        message.attributes.push(TcAttribute::Options(Vec::new()));
    }
    message
}

/// The RTM_NEWTFILTER of [`Netlink::add_redirect`].
pub(crate) fn redirect_filter_message(from: u32, to: u32) -> TcMessage {
    let mut message = TcMessage::with_index(tc_index(from));
    message.header.parent = INGRESS_HANDLE;
    // tcm_info: the priority (0: the kernel picks) in the upper 16 bits,
    // the protocol in network byte order in the lower ones.
    message.header.info = u32::from(ETH_P_ALL.to_be());

    // `match u8 0 0`: one key that compares no bits.
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];

    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];

    message.attributes = vec![
        TcAttribute::Kind(TcFilterU32::KIND.to_string()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]),
    ];
    message
}

/// The links the mirred redirect actions of a u32 or matchall filter
/// send packets to.
pub(crate) fn redirect_targets(message: &TcMessage) -> Vec<u32> {
    message
        .attributes
        .iter()
        .filter_map(|attribute| match attribute {
            TcAttribute::Options(options) => Some(options),
            _ => None,
        })
        .flatten()
        .filter_map(|option| match option {
            TcOption::U32(TcFilterU32Option::Action(actions))
            | TcOption::MatchAll(TcFilterMatchAllOption::Action(actions)) => Some(actions),
            _ => None,
        })
        .flatten()
        .flat_map(|action| &action.attributes)
        .filter_map(|attribute| match attribute {
            TcActionAttribute::Options(options) => Some(options),
            _ => None,
        })
        .flatten()
        .filter_map(|option| match option {
            TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror))
                if matches!(
                    mirror.eaction,
                    TcMirrorActionType::EgressRedir | TcMirrorActionType::IngressRedir
                ) =>
            {
                Some(mirror.ifindex)
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, Parseable, NLM_F_REQUEST};

    use super::*;
    use crate::socket::{decode, encode, frames};

    /// RTM_NEWTFILTER, RTM_NEWQDISC (`include/uapi/linux/rtnetlink.h`).
    const RTM_NEWTFILTER: u16 = 44;
    const RTM_NEWQDISC: u16 = 36;

    fn emitted(message: &TcMessage) -> Vec<u8> {
        let mut bytes = vec![0; message.buffer_len()];
        message.emit(&mut bytes);
        bytes
    }

    fn mirror_action(eaction: TcMirrorActionType, ifindex: u32) -> TcAction {
        let mut mirror = TcMirror::default();
        mirror.eaction = eaction;
        mirror.ifindex = ifindex;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind("mirred".into()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];
        action
    }

    #[test]
    fn redirect_filter_is_the_bytes_tc_sends() {
        let message = redirect_filter_message(7, 9);

        let bytes = emitted(&message);

        #[rustfmt::skip]
        let expected: Vec<u8> = [
            // struct tcmsg: AF_UNSPEC, ifindex 7, handle 0, parent ffff:0,
            // info: priority 0, htons(ETH_P_ALL)
            &[0, 0, 0, 0][..], &7i32.to_ne_bytes(), &0u32.to_ne_bytes(),
            &0xffff_0000u32.to_ne_bytes(), &u32::from(0x0003u16.to_be()).to_ne_bytes(),
            // TCA_KIND "u32"
            &[8, 0, 1, 0], b"u32\0",
            // TCA_OPTIONS, 96 bytes
            &[96, 0, 2, 0],
            //   TCA_U32_SEL: struct tc_u32_sel, TC_U32_TERMINAL, 1 key
            &[36, 0, 5, 0], &[1, 0, 1, 0], &[0; 12],
            //   struct tc_u32_key: mask 0, value 0, offset 0, offmask 0
            &[0; 16],
            //   TCA_U32_ACT, action 1
            &[56, 0, 7, 0], &[52, 0, 1, 0],
            //     TCA_ACT_KIND "mirred"
            &[11, 0, 1, 0], b"mirred\0", &[0],
            //     TCA_ACT_OPTIONS (nested) / TCA_MIRRED_PARMS: struct tc_mirred
            &[36, 0, 2, 0x80], &[32, 0, 2, 0],
            //       index, capab, action TC_ACT_STOLEN, refcnt, bindcnt
            &0u32.to_ne_bytes(), &0u32.to_ne_bytes(), &4i32.to_ne_bytes(),
            &0i32.to_ne_bytes(), &0i32.to_ne_bytes(),
            //       eaction TCA_EGRESS_REDIR, ifindex 9
            &1i32.to_ne_bytes(), &9u32.to_ne_bytes(),
        ]
        .concat();
        assert_eq!(bytes, expected);
    }

    #[test]
    fn redirect_filter_parses_back_to_a_u32_match_all_with_mirred_egress_redirect() {
        let bytes = encode(
            RouteNetlinkMessage::NewTrafficFilter(redirect_filter_message(7, 9)),
            NLM_F_REQUEST,
            1,
        );

        let frame = frames(&bytes).next().unwrap().unwrap();
        let RouteNetlinkMessage::NewTrafficFilter(message) =
            decode(frame.message_type, frame.payload).unwrap()
        else {
            panic!("not a RTM_NEWTFILTER");
        };

        assert_eq!(frame.message_type, RTM_NEWTFILTER);
        assert_eq!(message.header.index, 7);
        assert_eq!(message.header.parent, INGRESS_HANDLE);
        assert_eq!(message.header.info & 0xffff, u32::from(ETH_P_ALL.to_be()));
        assert_eq!(message.attributes[0], TcAttribute::Kind("u32".into()));
        let TcAttribute::Options(options) = &message.attributes[1] else {
            panic!("no TCA_OPTIONS: {message:?}");
        };
        let TcOption::U32(TcFilterU32Option::Selector(selector)) = &options[0] else {
            panic!("no selector: {options:?}");
        };
        assert_eq!(selector.flags, TcU32SelectorFlags::Terminal);
        assert_eq!(selector.nkeys, 1);
        assert_eq!(selector.keys, vec![TcU32Key::default()]);
        let TcOption::U32(TcFilterU32Option::Action(actions)) = &options[1] else {
            panic!("no actions: {options:?}");
        };
        let mut expected = mirror_action(TcMirrorActionType::EgressRedir, 9);
        if let TcActionAttribute::Options(options) = &mut expected.attributes[1] {
            if let TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror)) = &mut options[0] {
                mirror.generic.action = TcActionType::Stolen;
            }
        }
        assert_eq!(actions, &vec![expected]);
        assert_eq!(redirect_targets(&message), vec![9]);
    }

    #[test]
    fn ingress_qdisc_is_ffff_under_tc_h_ingress() {
        let bytes = encode(
            RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc_message(3, true)),
            NLM_F_REQUEST,
            1,
        );

        let frame = frames(&bytes).next().unwrap().unwrap();
        let message = TcMessage::parse(frame.payload).unwrap();

        assert_eq!(frame.message_type, RTM_NEWQDISC);
        assert_eq!(message.header.index, 3);
        assert_eq!(u32::from(message.header.handle), 0xffff_0000);
        assert_eq!(u32::from(message.header.parent), 0xffff_fff1);
        assert_eq!(
            message.attributes,
            vec![
                TcAttribute::Kind("ingress".into()),
                TcAttribute::Options(vec![])
            ]
        );
    }

    #[test]
    fn deleting_the_ingress_qdisc_names_its_kind_without_options() {
        let message = ingress_qdisc_message(3, false);

        assert_eq!(
            message.attributes,
            vec![TcAttribute::Kind("ingress".into())]
        );
    }

    #[test]
    fn redirect_targets_finds_matchall_redirects_and_ignores_mirrors() {
        let mut message = TcMessage::with_index(2);
        message.attributes = vec![
            TcAttribute::Kind("matchall".into()),
            TcAttribute::Options(vec![TcOption::MatchAll(TcFilterMatchAllOption::Action(
                vec![
                    mirror_action(TcMirrorActionType::EgressMirror, 5),
                    mirror_action(TcMirrorActionType::IngressRedir, 6),
                ],
            ))]),
        ];

        assert_eq!(redirect_targets(&message), vec![6]);
    }

    #[test]
    fn redirect_targets_of_a_u32_hash_table_without_actions_is_empty() {
        let mut message = TcMessage::with_index(2);
        message.attributes = vec![
            TcAttribute::Kind("u32".into()),
            TcAttribute::Options(vec![TcOption::U32(TcFilterU32Option::Divisor(1))]),
        ];

        assert!(redirect_targets(&message).is_empty());
    }

    #[test]
    fn an_index_past_i32_max_is_never_the_magic_block_index() {
        assert_eq!(tc_index(u32::MAX), 0);
        assert_eq!(tc_index(12), 12);
    }
}
