//! Outbound network policy, pure code (no wasmtime, no sockets): which
//! destinations a grant allows and which addresses a tool may connect to.
//!
//! A tool reaches `host:port` only when a grant pattern covers it, and only
//! at addresses that are globally routable or inside an operator's
//! `network.allow_private` CIDR. The host resolves the name once, checks
//! every address here, and connects to a checked one.

use crate::grants::HostPattern;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether a grant's patterns allow `host:port` for this scheme. A pattern
/// without a port allows the scheme's default port only.
pub fn host_allowed(patterns: &[String], host: &str, port: u16, https: bool) -> bool {
    let default_port = if https { 443 } else { 80 };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    patterns.iter().filter_map(|p| HostPattern::parse(p).ok()).any(|p| {
        let port_ok = p.port.map_or(port == default_port, |want| want == port);
        let host_ok = if p.wildcard { host.ends_with(&format!(".{}", p.host)) } else { host == p.host };
        port_ok && host_ok
    })
}

fn v4_is_global(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                   // "this network", 0.0.0.0
        || a == 10                              // RFC 1918
        || a == 127                             // loopback
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 169 && b == 254)               // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b))  // RFC 1918
        || (a == 192 && b == 0 && c == 0)       // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)       // TEST-NET-1
        || (a == 192 && b == 168)               // RFC 1918
        || (a == 198 && (b == 18 || b == 19))   // benchmarking
        || (a == 198 && b == 51 && c == 100)    // TEST-NET-2
        || (a == 203 && b == 0 && c == 113)     // TEST-NET-3
        || a >= 224) // multicast, reserved, broadcast
}

/// Whether an address is globally routable. IPv4-mapped and -compatible
/// IPv6 forms are judged as the IPv4 address they carry.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_is_global(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_is_global(v4);
            }
            let seg = v6.segments();
            if seg[..6].iter().all(|s| *s == 0) {
                // ::, ::1 and the deprecated IPv4-compatible ::a.b.c.d
                return false;
            }
            !(v6 == Ipv6Addr::LOCALHOST
                || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (seg[0] & 0xff00) == 0xff00 // multicast
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || (seg[0] == 0x0064 && seg[1] == 0xff9b) // NAT64: would reach IPv4 space unchecked
                || seg[0] == 0x2002) // 6to4: embeds an IPv4 address
        }
    }
}

fn in_cidr(ip: IpAddr, (net, prefix): (IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Whether a tool may connect to `ip`: globally routable, or covered by one
/// of the operator's private allowances. Mapped forms are unwrapped first so
/// `::ffff:127.0.0.1` is checked as `127.0.0.1`.
pub fn address_allowed(ip: IpAddr, allow_private: &[(IpAddr, u8)]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    is_global(ip) || allow_private.iter().any(|cidr| in_cidr(ip, *cidr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::parse_cidr;

    #[test]
    fn private_and_special_addresses_are_blocked() {
        let blocked = [
            "0.0.0.0",
            "10.1.2.3",
            "127.0.0.1",
            "127.255.255.254",
            "100.64.1.1",
            "100.127.255.255",
            "169.254.169.254",
            "169.254.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "192.0.2.1",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.10.10.10",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "fc00::f00d",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
        ];
        for addr in blocked {
            let ip: IpAddr = addr.parse().unwrap();
            assert!(!is_global(ip), "{addr} must not count as global");
            assert!(!address_allowed(ip, &[]), "{addr} must be refused");
        }
        for addr in ["1.1.1.1", "8.8.8.8", "100.128.0.1", "172.32.0.1", "2606:4700::1111", "::ffff:1.1.1.1"] {
            assert!(address_allowed(addr.parse().unwrap(), &[]), "{addr} is public");
        }
    }

    #[test]
    fn allow_private_opens_exactly_its_cidrs() {
        let allow = [parse_cidr("127.0.0.0/8").unwrap(), parse_cidr("fd00::/8").unwrap()];
        let cases = [
            ("127.0.0.1", true),
            ("::ffff:127.0.0.1", true),
            ("10.0.0.1", false),
            ("169.254.169.254", false),
            ("fd00::1", true),
            ("fc00::1", false),
            ("::1", false),
        ];
        for (addr, expected) in cases {
            assert_eq!(address_allowed(addr.parse().unwrap(), &allow), expected, "{addr}");
        }
    }

    #[test]
    fn host_patterns_match_with_default_ports() {
        let grant = ["api.example.com".to_string(), "*.example.org:8443".to_string(), "127.0.0.1:9000".to_string()];
        let cases = [
            ("api.example.com", 443, true, true),
            ("API.Example.com.", 443, true, true),
            ("api.example.com", 80, false, true),
            ("api.example.com", 80, true, false),
            ("api.example.com", 8443, true, false),
            ("x.example.org", 8443, true, true),
            ("example.org", 8443, true, false),
            ("x.example.org", 443, true, false),
            ("evil.com", 443, true, false),
            ("api.example.com.evil.com", 443, true, false),
            ("127.0.0.1", 9000, false, true),
            ("127.0.0.1", 9001, false, false),
        ];
        for (host, port, https, expected) in cases {
            assert_eq!(host_allowed(&grant, host, port, https), expected, "{host}:{port} https={https}");
        }
    }
}
