//! The XDP program on crafted frames through BPF_PROG_TEST_RUN (aya
//! `TestRun`): one fixture table `{what, frame, expected verdict, counter}`
//! against one loaded program with a fixed map state, plus the stateful
//! cases (SYN bucket, verdict expiry, deny with RST) as their own tests.
//! Every RST is compared byte for byte with a reply built here from the SYN,
//! with checksums computed by `common::checksum`, not by the program.
//! Needs root; see `common::privileged`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{net::IpAddr, thread, time::Duration};

use aya::programs::{TestRun, TestRunOptions};
use common::*;
use loader::{attach, layout, monotonic_now, Action, Counters, Desired, Maps, Reason};

const PORT: u16 = 443;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

struct Harness {
    ebpf: aya::Ebpf,
    maps: Maps,
}

impl Harness {
    /// A fresh program with private (unpinned) maps, configured by `desired`.
    fn new(desired: &Desired) -> Self {
        let mut ebpf = attach::load(None).expect("load the XDP program (verifier)");
        let mut maps = Maps::take(&mut ebpf).unwrap();
        let plan = loader::plan(desired, &maps.current().unwrap()).unwrap();
        maps.apply(&plan).unwrap();
        Self { ebpf, maps }
    }

    /// Runs the program on `frame`: (XDP action, frame afterwards).
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; 2048];
        let program = attach::program_mut(&mut self.ebpf).unwrap();
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }
}

fn desired() -> Desired {
    Desired {
        protected_ports: [PORT, 8443].into(),
        deny: vec![
            "203.0.113.0/24".parse().unwrap(),
            "2001:db8:bad::/48".parse().unwrap(),
        ],
        deny_action: Action::Drop,
        tenant_networks: vec![
            ("198.51.100.0/24".parse().unwrap(), 7),
            ("2001:db8:7::/48".parse().unwrap(), 7),
            ("192.0.2.0/25".parse().unwrap(), 8),
            ("2001:db8:8::/48".parse().unwrap(), 8),
        ],
        syn_rate_per_second: 0,
        syn_burst: 0,
    }
}

/// Runtime state edge would have written: learned addresses and verdicts.
fn learn_and_judge(maps: &mut Maps) {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let later = monotonic_now() + Duration::from_secs(3600);
    maps.write_verdict(7, Action::Drop, later).unwrap();
    maps.write_verdict(8, Action::Rst, later).unwrap();
    // Learned addresses.
    maps.record_learned(ip("100.64.0.1"), 9).unwrap();
    maps.record_learned(ip("2001:db8:9::1"), 9).unwrap();
    maps.write_verdict(9, Action::Rst, later).unwrap();
    // One address seen with tenants 10 and 11, both over quota: shared, so
    // never rejected for either.
    maps.record_learned(ip("100.64.0.2"), 10).unwrap();
    maps.record_learned(ip("100.64.0.2"), 11).unwrap();
    maps.write_verdict(10, Action::Drop, later).unwrap();
    maps.write_verdict(11, Action::Rst, later).unwrap();
    // Tenant 12's verdict expired a second ago.
    maps.record_learned(ip("100.64.0.3"), 12).unwrap();
    maps.write_verdict(12, Action::Drop, monotonic_now() - Duration::from_secs(1))
        .unwrap();
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// XDP_PASS with the frame untouched.
    Pass,
    Drop,
    /// XDP_TX of a RST+ACK answering the SYN.
    Rst,
}

struct Fixture {
    what: &'static str,
    frame: Vec<u8>,
    /// The SYN an Rst answers.
    syn: Option<Segment>,
    expect: Expect,
    /// Counter that must go up by exactly one (all others stay).
    reason: Option<Reason>,
    /// Tenant whose rejection count must go up by one.
    tenant: Option<u32>,
}

fn fx(
    what: &'static str,
    seg: Segment,
    expect: Expect,
    reason: Option<Reason>,
    tenant: Option<u32>,
) -> Fixture {
    Fixture {
        what,
        frame: seg.frame(),
        syn: Some(seg),
        expect,
        reason,
        tenant,
    }
}

fn raw(what: &'static str, frame: Vec<u8>, reason: Option<Reason>) -> Fixture {
    Fixture {
        what,
        frame,
        syn: None,
        expect: Expect::Pass,
        reason,
        tenant: None,
    }
}

/// A denied source's SYN, mangled by `f` (frame bytes, offset of IP header).
fn mangled(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut frame = syn("203.0.113.9", "10.0.0.1", PORT).frame();
    f(&mut frame);
    frame
}

fn fixtures() -> Vec<Fixture> {
    use Expect::*;
    use Reason::*;
    let v4 = "10.0.0.1";
    let v6 = "2001:db8:ffff::1";
    let mut dest_opts = vec![0u8; 8];
    dest_opts[2] = 1; // PadN option filling the header
    dest_opts[3] = 4;
    let mut qinq = syn("203.0.113.9", v4, PORT).vlan(100).frame();
    qinq.splice(12..12, [0x88, 0xa8, 0x00, 0x07]); // outer 802.1ad tag
    let mut frag_v4 = syn("203.0.113.9", v4, PORT).frame();
    frag_v4[14 + 6] = 0x00;
    frag_v4[14 + 7] = 0x10; // fragment offset 16 (x8 bytes)
    let mut udp = syn("203.0.113.9", v4, PORT).frame();
    udp[14 + 9] = 17;
    let mut arp = vec![0u8; 42];
    arp[..6].copy_from_slice(&[0xff; 6]);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let mut v6_frag = syn("2001:db8:bad::1", v6, PORT);
    v6_frag.ipv6_ext = vec![(44, vec![0, 0, 0x00, 0x08, 0, 0, 0, 1])]; // offset 1 (x8)
    let mut v6_first_frag = syn("2001:db8:bad::1", v6, PORT);
    v6_first_frag.ipv6_ext = vec![(44, vec![0, 0, 0x00, 0x01, 0, 0, 0, 2])]; // offset 0, more fragments
    let mut v6_no_next = syn("2001:db8:bad::1", v6, PORT).frame();
    v6_no_next[14 + 6] = 59; // "no next header"
    let mut with_ip_options = syn("192.0.2.13", v4, PORT);
    with_ip_options.ipv4_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    let mut v6_dest_opts = syn("2001:db8:8::2", v6, PORT);
    v6_dest_opts.ipv6_ext = vec![(60, dest_opts)];

    vec![
        // Who passes, who is rejected.
        fx(
            "IPv4 SYN from an unknown source passes",
            syn("10.9.9.9", v4, PORT),
            Pass,
            Some(Passed),
            None,
        ),
        fx(
            "IPv6 SYN from an unknown source passes",
            syn("2001:db8:1::1", v6, PORT),
            Pass,
            Some(Passed),
            None,
        ),
        fx(
            "IPv4 SYN from the deny list is dropped",
            syn("203.0.113.9", v4, PORT),
            Drop,
            Some(Denied),
            None,
        ),
        fx(
            "IPv6 SYN from the deny list is dropped",
            syn("2001:db8:bad::1", v6, 8443),
            Drop,
            Some(Denied),
            None,
        ),
        fx(
            "IPv4 SYN, declared network, drop verdict",
            syn("198.51.100.20", v4, PORT),
            Drop,
            Some(TenantRejected),
            Some(7),
        ),
        fx(
            "IPv6 SYN, declared network, drop verdict",
            syn("2001:db8:7::5", v6, PORT),
            Drop,
            Some(TenantRejected),
            Some(7),
        ),
        fx(
            "IPv4 SYN, declared network, RST verdict",
            syn("192.0.2.10", v4, PORT),
            Rst,
            Some(TenantRejected),
            Some(8),
        ),
        fx(
            "IPv6 SYN, declared network, RST verdict",
            syn("2001:db8:8::1", v6, PORT),
            Rst,
            Some(TenantRejected),
            Some(8),
        ),
        fx(
            "IPv4 SYN, learned address, RST verdict",
            syn("100.64.0.1", v4, PORT),
            Rst,
            Some(TenantRejected),
            Some(9),
        ),
        fx(
            "IPv6 SYN, learned address, RST verdict",
            syn("2001:db8:9::1", v6, PORT),
            Rst,
            Some(TenantRejected),
            Some(9),
        ),
        fx(
            "IPv4 SYN without options (54 bytes): RST stays 54",
            syn("192.0.2.10", v4, PORT).no_options(),
            Rst,
            Some(TenantRejected),
            Some(8),
        ),
        fx(
            "IPv4 SYN with data (TFO): the RST acks the data too",
            syn("192.0.2.12", v4, PORT).payload(b"GET / HTTP/1.1\r\n"),
            Rst,
            Some(TenantRejected),
            Some(8),
        ),
        fx(
            "IPv4 header with options: the RST has none",
            with_ip_options,
            Rst,
            Some(TenantRejected),
            Some(8),
        ),
        fx(
            "IPv6 SYN behind a destination-options header: RST without it",
            v6_dest_opts,
            Rst,
            Some(TenantRejected),
            Some(8),
        ),
        fx(
            "expired verdict passes",
            syn("100.64.0.3", v4, PORT),
            Pass,
            Some(Passed),
            None,
        ),
        fx(
            "shared learned address passes although both tenants have verdicts",
            syn("100.64.0.2", v4, PORT),
            Pass,
            Some(Passed),
            None,
        ),
        // VLAN.
        fx(
            "VLAN-tagged IPv4 SYN, RST verdict: the RST keeps the tag",
            syn("192.0.2.11", v4, PORT).vlan(100),
            Rst,
            Some(TenantRejected),
            Some(8),
        ),
        fx(
            "VLAN-tagged IPv6 SYN, RST verdict",
            syn("2001:db8:8::3", v6, PORT).vlan(4094),
            Rst,
            Some(TenantRejected),
            Some(8),
        ),
        fx(
            "VLAN-tagged IPv6 SYN from the deny list is dropped",
            syn("2001:db8:bad::2", v6, PORT).vlan(7),
            Drop,
            Some(Denied),
            None,
        ),
        fx(
            "VLAN-tagged IPv4 SYN from an unknown source passes",
            syn("10.9.9.9", v4, PORT).vlan(7),
            Pass,
            Some(Passed),
            None,
        ),
        raw("QinQ (two tags) is not understood: passes", qinq, None),
        // Established connections and non-SYNs are never judged.
        fx(
            "ACK from a rejected (drop) tenant passes",
            syn("198.51.100.20", v4, PORT).flags(TCP_ACK),
            Pass,
            None,
            None,
        ),
        fx(
            "data from a rejected (RST) tenant passes",
            syn("192.0.2.10", v4, PORT)
                .flags(TCP_PSH | TCP_ACK)
                .payload(b"hello"),
            Pass,
            None,
            None,
        ),
        fx(
            "IPv6 ACK from a rejected tenant passes",
            syn("2001:db8:8::1", v6, PORT).flags(TCP_ACK),
            Pass,
            None,
            None,
        ),
        fx(
            "SYN+ACK from a denied source passes",
            syn("203.0.113.9", v4, PORT).flags(TCP_SYN | TCP_ACK),
            Pass,
            None,
            None,
        ),
        fx(
            "FIN from a denied source passes",
            syn("203.0.113.9", v4, PORT).flags(TCP_FIN | TCP_ACK),
            Pass,
            None,
            None,
        ),
        fx(
            "RST from a denied source passes",
            syn("203.0.113.9", v4, PORT).flags(TCP_RST),
            Pass,
            None,
            None,
        ),
        fx(
            "SYN+RST is no connection attempt: passes",
            syn("203.0.113.9", v4, PORT).flags(TCP_SYN | TCP_RST),
            Pass,
            None,
            None,
        ),
        fx(
            "SYN to an unprotected port from a denied source passes",
            syn("203.0.113.9", v4, 22),
            Pass,
            None,
            None,
        ),
        fx(
            "SYN to an unprotected port from a rejected tenant passes",
            syn("2001:db8:7::5", v6, 80),
            Pass,
            None,
            None,
        ),
        raw("UDP from a denied source passes", udp, None),
        raw("ARP passes", arp, None),
        raw("IPv4 later fragment passes (no TCP header)", frag_v4, None),
        fx(
            "IPv6 later fragment passes (no TCP header)",
            v6_frag,
            Pass,
            None,
            None,
        ),
        fx(
            "IPv6 first fragment is judged like a datagram",
            v6_first_frag,
            Drop,
            Some(Denied),
            None,
        ),
        raw("IPv6 with no next header passes", v6_no_next, None),
        // Malformed: never a verifier or bounds problem, always passed.
        raw(
            "Ethernet header only, IPv4 ethertype",
            mangled(|f| f.truncate(14)),
            Some(Malformed),
        ),
        raw(
            "VLAN tag cut short",
            syn("203.0.113.9", v4, PORT).vlan(1).frame()[..16].to_vec(),
            Some(Malformed),
        ),
        raw(
            "IPv4 header cut short",
            mangled(|f| f.truncate(14 + 19)),
            Some(Malformed),
        ),
        raw(
            "IPv4 IHL below 5",
            mangled(|f| f[14] = 0x44),
            Some(Malformed),
        ),
        raw(
            "IPv4 version field says 6",
            mangled(|f| f[14] = 0x65),
            Some(Malformed),
        ),
        raw(
            "IPv4 total length shorter than the headers",
            mangled(|f| f[14 + 2..14 + 4].copy_from_slice(&30u16.to_be_bytes())),
            Some(Malformed),
        ),
        raw(
            "TCP header cut short",
            mangled(|f| f.truncate(14 + 20 + 12)),
            Some(Malformed),
        ),
        raw(
            "TCP data offset below 5",
            mangled(|f| f[14 + 20 + 12] = 0x40),
            Some(Malformed),
        ),
        raw(
            "TCP data offset past the datagram",
            mangled(|f| f[14 + 20 + 12] = 0xf0),
            Some(Malformed),
        ),
        raw(
            "IPv6 header cut short",
            syn("2001:db8:bad::1", v6, PORT).frame()[..14 + 39].to_vec(),
            Some(Malformed),
        ),
        raw(
            "IPv6 extension header cut short",
            {
                let mut s = syn("2001:db8:bad::1", v6, PORT);
                s.ipv6_ext = vec![(60, vec![0, 0, 1, 4, 0, 0, 0, 0])];
                s.frame()[..14 + 40 + 1].to_vec()
            },
            Some(Malformed),
        ),
        raw(
            "IPv6 TCP header cut short",
            syn("2001:db8:bad::1", v6, PORT).frame()[..14 + 40 + 10].to_vec(),
            Some(Malformed),
        ),
    ]
}

#[test]
fn fixture_table() {
    if !privileged("fixture_table") {
        return;
    }
    let mut h = Harness::new(&desired());
    learn_and_judge(&mut h.maps);
    let mut failures = Vec::new();
    for f in fixtures() {
        let before = h.maps.counters().unwrap();
        let (action, out) = h.run(&f.frame);
        let after = h.maps.counters().unwrap();
        let mut problems = Vec::new();
        match f.expect {
            Expect::Pass => {
                if action != XDP_PASS {
                    problems.push(format!("action {action}, expected XDP_PASS"));
                } else if out != f.frame {
                    problems.push("passed frame was modified".to_owned());
                }
            }
            Expect::Drop => {
                if action != XDP_DROP {
                    problems.push(format!("action {action}, expected XDP_DROP"));
                }
            }
            Expect::Rst => {
                if action != XDP_TX {
                    problems.push(format!("action {action}, expected XDP_TX"));
                } else if let Err(p) = check_rst(f.syn.as_ref().unwrap(), f.frame.len(), &out) {
                    problems.push(p);
                }
            }
        }
        problems.extend(counter_problems(&before, &after, f.reason, f.tenant));
        if !problems.is_empty() {
            failures.push(format!("{}: {}", f.what, problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

fn counter_problems(
    before: &Counters,
    after: &Counters,
    reason: Option<Reason>,
    tenant: Option<u32>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for r in Reason::ALL {
        let want = before.get(r) + u64::from(reason == Some(r));
        if after.get(r) != want {
            problems.push(format!(
                "counter {} went {} -> {}, expected {want}",
                r.name(),
                before.get(r),
                after.get(r)
            ));
        }
    }
    let mut want = before.per_tenant.clone();
    if let Some(t) = tenant {
        *want.entry(t).or_default() += 1;
    }
    if after.per_tenant != want {
        problems.push(format!(
            "per-tenant rejections {:?}, expected {want:?}",
            after.per_tenant
        ));
    }
    problems
}

/// The reply the program must send for `syn`, built here from scratch.
fn expected_rst(syn: &Segment, in_len: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(CLIENT_MAC); // back to the sender
    f.extend(SERVER_MAC);
    if let Some(id) = syn.vlan {
        f.extend(0x8100u16.to_be_bytes());
        f.extend(id.to_be_bytes());
    }
    let ack = syn
        .seq
        .wrapping_add(1)
        .wrapping_add(syn.payload.len() as u32);
    let mut tcp = Vec::new();
    tcp.extend(syn.dport.to_be_bytes());
    tcp.extend(syn.sport.to_be_bytes());
    tcp.extend(0u32.to_be_bytes()); // seq 0: the SYN carried no ACK (RFC 9293 §3.10.7.1)
    tcp.extend(ack.to_be_bytes());
    tcp.extend([0x50, TCP_RST | TCP_ACK, 0, 0, 0, 0, 0, 0]);
    let sum = tcp_checksum(syn.dst, syn.src, &tcp);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    match (syn.src, syn.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend(0x0800u16.to_be_bytes());
            let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
            ip.extend(d.octets());
            ip.extend(s.octets());
            let sum = checksum(&ip, 0);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            f.extend(ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend(0x86ddu16.to_be_bytes());
            f.extend([0x60, 0, 0, 0, 0, 20, 6, 64]);
            f.extend(d.octets());
            f.extend(s.octets());
        }
        _ => unreachable!(),
    }
    f.extend(tcp);
    // Padded with zeros to the 60-byte Ethernet minimum, when the SYN's
    // frame was at least that long (a frame is never grown).
    let frame_len = f.len().max(in_len.min(60));
    f.resize(frame_len, 0);
    f
}

fn check_rst(syn: &Segment, in_len: usize, out: &[u8]) -> Result<(), String> {
    let want = expected_rst(syn, in_len);
    if out == want.as_slice() {
        // Belt and braces: the checksums verify on their own too.
        let l3 = 14 + if syn.vlan.is_some() { 4 } else { 0 };
        let (ip_len, tcp_len) = if syn.src.is_ipv4() {
            (20, 20)
        } else {
            (40, 20)
        };
        if syn.src.is_ipv4() && checksum(&out[l3..l3 + 20], 0) != 0 {
            return Err("IPv4 header checksum does not verify".into());
        }
        let mut seg = out[l3 + ip_len..l3 + ip_len + tcp_len].to_vec();
        let got = u16::from_be_bytes([seg[16], seg[17]]);
        seg[16..18].fill(0);
        if tcp_checksum(syn.dst, syn.src, &seg) != got {
            return Err("TCP checksum does not verify".into());
        }
        return Ok(());
    }
    Err(format!(
        "RST differs:\n    got  {}\n    want {}",
        hex(out),
        hex(&want)
    ))
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join("")
}

#[test]
fn deny_list_with_rst_action() {
    if !privileged("deny_list_with_rst_action") {
        return;
    }
    let mut h = Harness::new(&Desired {
        deny_action: Action::Rst,
        ..desired()
    });
    for seg in [
        syn("203.0.113.200", "10.0.0.1", PORT),
        syn("2001:db8:bad:1::9", "2001:db8::1", 8443).vlan(3),
    ] {
        let frame = seg.frame();
        let (action, out) = h.run(&frame);
        assert_eq!(action, XDP_TX, "{seg:?}");
        check_rst(&seg, frame.len(), &out).unwrap();
    }
    assert_eq!(h.maps.counters().unwrap().denied, 2);
}

#[test]
fn syn_bucket_limits_each_source() {
    if !privileged("syn_bucket_limits_each_source") {
        return;
    }
    // 20 SYNs/s (one per 50 ms), bursts of 3.
    let mut h = Harness::new(&Desired {
        syn_rate_per_second: 20,
        syn_burst: 3,
        ..desired()
    });
    let busy = syn("10.1.1.1", "10.0.0.1", PORT).frame();
    let got: Vec<u32> = (0..4).map(|_| h.run(&busy).0).collect();
    assert_eq!(
        got,
        [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP],
        "burst of 3, then empty"
    );

    // Another source has its own bucket; IPv6 too.
    assert_eq!(
        h.run(&syn("10.1.1.2", "10.0.0.1", PORT).frame()).0,
        XDP_PASS
    );
    assert_eq!(
        h.run(&syn("2001:db8:1::2", "2001:db8::1", PORT).frame()).0,
        XDP_PASS
    );
    // Non-SYNs never take tokens.
    assert_eq!(
        h.run(&syn("10.1.1.1", "10.0.0.1", PORT).flags(TCP_ACK).frame())
            .0,
        XDP_PASS
    );

    // Tokens come back at the configured rate.
    thread::sleep(Duration::from_millis(120));
    assert_eq!(h.run(&busy).0, XDP_PASS, "refilled after 120 ms at 20/s");

    let c = h.maps.counters().unwrap();
    assert_eq!((c.passed, c.syn_limited), (6, 1));
    let fill = h.maps.fill().unwrap();
    let buckets = fill
        .iter()
        .find(|f| f.name == layout::MAP_SYN_BUCKETS)
        .unwrap();
    assert_eq!(buckets.entries, 3, "one bucket per source seen");
}

#[test]
fn verdict_stops_matching_when_it_expires() {
    if !privileged("verdict_stops_matching_when_it_expires") {
        return;
    }
    let mut h = Harness::new(&desired());
    let frame = syn("100.64.9.9", "10.0.0.1", PORT).frame();
    h.maps
        .record_learned("100.64.9.9".parse().unwrap(), 21)
        .unwrap();
    assert_eq!(h.run(&frame).0, XDP_PASS, "no verdict yet");

    h.maps
        .write_verdict(
            21,
            Action::Drop,
            monotonic_now() + Duration::from_millis(300),
        )
        .unwrap();
    assert_eq!(h.run(&frame).0, XDP_DROP, "verdict live");
    thread::sleep(Duration::from_millis(400));
    assert_eq!(h.run(&frame).0, XDP_PASS, "verdict expired on its own");

    h.maps
        .write_verdict(21, Action::Rst, monotonic_now() + Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        h.run(&frame).0,
        XDP_TX,
        "a new verdict replaces the old one"
    );
    h.maps.clear_verdict(21).unwrap();
    assert_eq!(h.run(&frame).0, XDP_PASS, "cleared");
    assert_eq!(h.maps.counters().unwrap().per_tenant.get(&21), Some(&2));
}

#[test]
fn learned_addresses_become_shared_on_a_second_tenant() {
    if !privileged("learned_addresses_become_shared_on_a_second_tenant") {
        return;
    }
    use loader::LearnedOutcome::*;
    let mut h = Harness::new(&desired());
    let addr: IpAddr = "2001:db8:42::1".parse().unwrap();
    assert_eq!(h.maps.record_learned(addr, 1).unwrap(), New);
    assert_eq!(h.maps.record_learned(addr, 1).unwrap(), Known);
    assert_eq!(h.maps.record_learned(addr, 2).unwrap(), NowShared);
    assert_eq!(
        h.maps.record_learned(addr, 1).unwrap(),
        Shared,
        "stays shared for good"
    );
    assert_eq!(h.maps.record_learned(addr, 3).unwrap(), Shared);
    let learned = h.maps.learned(addr).unwrap().unwrap();
    assert!(learned.is_shared());

    h.maps
        .write_verdict(1, Action::Drop, monotonic_now() + Duration::from_secs(60))
        .unwrap();
    h.maps
        .write_verdict(2, Action::Drop, monotonic_now() + Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        h.run(&syn("2001:db8:42::1", "2001:db8::1", PORT).frame()).0,
        XDP_PASS
    );
}

#[test]
fn apply_is_idempotent_against_the_kernel() {
    if !privileged("apply_is_idempotent_against_the_kernel") {
        return;
    }
    let mut h = Harness::new(&desired());
    let current = h.maps.current().unwrap();
    assert!(
        loader::plan(&desired(), &current).unwrap().is_empty(),
        "second plan is empty"
    );
    // Read back exactly what was written.
    assert_eq!(current.protected_ports, [PORT, 8443].into());
    assert_eq!(current.deny.len(), 2);
    assert_eq!(current.tenant_networks.len(), 4);

    // A reload removes a network and the SYN it named is judged no more.
    let mut next = desired();
    next.tenant_networks.retain(|(_, t)| *t != 8);
    let plan = loader::plan(&next, &current).unwrap();
    assert_eq!(plan.len(), 2);
    h.maps.apply(&plan).unwrap();
    h.maps
        .write_verdict(8, Action::Rst, monotonic_now() + Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        h.run(&syn("192.0.2.10", "10.0.0.1", PORT).frame()).0,
        XDP_PASS
    );
    assert!(loader::plan(&next, &h.maps.current().unwrap())
        .unwrap()
        .is_empty());
}
