//! Shared by the kernel tests: the root gate, a packet builder, and an
//! Internet checksum written independently of the XDP program's.
#![allow(dead_code)] // each test file uses a different part
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

/// Whether this test may touch the kernel. Root is needed for BPF, bpffs,
/// namespaces and veth pairs. Under `CI=true` (CI runs as root) a missing
/// privilege is a failure; elsewhere the test is skipped with a message.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root (BPF_PROG_TEST_RUN, bpffs, netns, veth) and CI=true: CI runs as root, so this is a failure");
    }
    skip(&format!(
        "{test}: needs root (BPF_PROG_TEST_RUN, bpffs, netns, veth); run the tests as root"
    ));
    false
}

/// Says why a test is skipped, on the real stderr: libtest captures
/// `eprintln!` of passing tests, and a skip must be seen.
pub fn skip(why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED {why}");
}

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// One TCP segment in an Ethernet frame, with correct checksums.
#[derive(Clone, Debug)]
pub struct Segment {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub vlan: Option<u16>,
    pub ipv4_options: Vec<u8>,
    /// IPv6 extension headers as (type, full bytes incl. next-header byte,
    /// which the builder fills in).
    pub ipv6_ext: Vec<(u8, Vec<u8>)>,
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
}

/// MSS 1460, SACK permitted, timestamps, window scale 7: what Linux sends.
pub fn linux_syn_options() -> Vec<u8> {
    vec![
        2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
    ]
}

pub fn syn(src: &str, dst: &str, dport: u16) -> Segment {
    Segment {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        sport: 40_000,
        dport,
        seq: 0x1234_5678,
        ack: 0,
        flags: TCP_SYN,
        vlan: None,
        ipv4_options: vec![],
        ipv6_ext: vec![],
        tcp_options: linux_syn_options(),
        payload: vec![],
    }
}

impl Segment {
    pub fn flags(mut self, flags: u8) -> Self {
        self.flags = flags;
        if flags & TCP_ACK != 0 {
            self.ack = 0x0bad_cafe;
        }
        self
    }
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlan = Some(id);
        self
    }
    pub fn no_options(mut self) -> Self {
        self.tcp_options.clear();
        self
    }
    pub fn payload(mut self, data: &[u8]) -> Self {
        self.payload = data.to_vec();
        self
    }

    pub fn tcp_bytes(&self) -> Vec<u8> {
        assert_eq!(self.tcp_options.len() % 4, 0);
        let doff = (20 + self.tcp_options.len()) / 4;
        let mut t = Vec::new();
        t.extend(self.sport.to_be_bytes());
        t.extend(self.dport.to_be_bytes());
        t.extend(self.seq.to_be_bytes());
        t.extend(self.ack.to_be_bytes());
        t.push((doff as u8) << 4);
        t.push(self.flags);
        t.extend(64240u16.to_be_bytes());
        t.extend([0, 0, 0, 0]); // checksum, urgent pointer
        t.extend(&self.tcp_options);
        t.extend(&self.payload);
        let sum = tcp_checksum(self.src, self.dst, &t);
        t[16..18].copy_from_slice(&sum.to_be_bytes());
        t
    }

    pub fn frame(&self) -> Vec<u8> {
        let tcp = self.tcp_bytes();
        let mut f = Vec::new();
        f.extend(SERVER_MAC);
        f.extend(CLIENT_MAC);
        if let Some(id) = self.vlan {
            f.extend(0x8100u16.to_be_bytes());
            f.extend(id.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend(0x0800u16.to_be_bytes());
                assert_eq!(self.ipv4_options.len() % 4, 0);
                let ihl = (20 + self.ipv4_options.len()) / 4;
                let mut ip = vec![0x40 | ihl as u8, 0];
                ip.extend(((ihl * 4 + tcp.len()) as u16).to_be_bytes());
                ip.extend([0x12, 0x34, 0x40, 0x00, 64, 6, 0, 0]);
                ip.extend(s.octets());
                ip.extend(d.octets());
                ip.extend(&self.ipv4_options);
                let sum = checksum(&ip, 0);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                f.extend(ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend(0x86ddu16.to_be_bytes());
                let ext_len: usize = self.ipv6_ext.iter().map(|(_, b)| b.len()).sum();
                let first = self.ipv6_ext.first().map_or(6, |(t, _)| *t);
                f.extend([0x60, 0, 0, 0]);
                f.extend(((ext_len + tcp.len()) as u16).to_be_bytes());
                f.extend([first, 64]);
                f.extend(s.octets());
                f.extend(d.octets());
                for (i, (_, bytes)) in self.ipv6_ext.iter().enumerate() {
                    let mut bytes = bytes.clone();
                    bytes[0] = self.ipv6_ext.get(i + 1).map_or(6, |(t, _)| *t);
                    f.extend(bytes);
                }
            }
            _ => panic!("mixed families"),
        }
        f.extend(tcp);
        f
    }
}

/// RFC 1071 over big-endian 16-bit words, starting from `sum`.
pub fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for pair in data.chunks(2) {
        let word = if pair.len() == 2 {
            u16::from_be_bytes([pair[0], pair[1]])
        } else {
            u16::from(pair[0]) << 8
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// TCP checksum with the IPv4 (RFC 9293 §3.1) or IPv6 (RFC 8200 §8.1)
/// pseudo-header; `segment` has its checksum field zeroed.
pub fn tcp_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend(s.octets());
            pseudo.extend(d.octets());
            pseudo.extend([0, 6]);
            pseudo.extend((segment.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend(s.octets());
            pseudo.extend(d.octets());
            pseudo.extend((segment.len() as u32).to_be_bytes());
            pseudo.extend([0, 0, 0, 6]);
        }
        _ => panic!("mixed families"),
    }
    let mut all = pseudo;
    all.extend(segment);
    checksum(&all, 0)
}
