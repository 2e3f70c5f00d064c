//! The network capability's policy (contract §6), pure code: no wasmtime,
//! no sockets.
//!
//! A tool reaches `host:port` only when a [`HostPattern`] of its grant
//! covers it, and only at addresses that are globally routable or inside
//! the operator's `network.allow_private` ([`PrivateRanges`]). The egress
//! hook (`caps::http`) resolves the name once, checks every address here,
//! and connects to a checked one. Patterns and ranges are parsed once,
//! where they enter (manifest, config, session request), never per request.

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A network grant entry: `host[:port]` or `*.domain[:port]`. Without a
/// port the scheme's default port applies (443 for https, 80 for http).
/// Serialized as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// The entry as written, shown back in grants.
    text: String,
    /// Lowercase host, or the suffix after `*.` for a wildcard.
    pub host: String,
    pub wildcard: bool,
    pub port: Option<u16>,
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let lower = text.trim().to_ascii_lowercase();
        let (host, port) = match lower.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => {
                let port: u16 = p.parse().map_err(|_| format!("{text:?}: bad port"))?;
                if port == 0 {
                    return Err(format!("{text:?}: port 0"));
                }
                (h.to_string(), Some(port))
            }
            _ => (lower.clone(), None),
        };
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, host),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(format!("{text:?} is not a host name like api.example.com or *.example.org:8443"));
        }
        Ok(HostPattern { text: text.to_string(), host, wildcard, port })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether every destination `other` allows is also allowed by `self`.
    pub fn covers(&self, other: &HostPattern) -> bool {
        let port_ok = self.port.is_none() && other.port.is_none() || self.port == other.port;
        let host_ok = match (self.wildcard, other.wildcard) {
            (false, false) => self.host == other.host,
            (false, true) => false,
            (true, _) => {
                other.host.ends_with(&format!(".{}", self.host)) || (other.wildcard && other.host == self.host)
            }
        };
        port_ok && host_ok
    }

    /// Whether a request to `host:port` over this scheme matches. `host` is
    /// as the request names it (any case, maybe a trailing dot).
    pub fn allows(&self, host: &str, port: u16, https: bool) -> bool {
        let default_port = if https { 443 } else { 80 };
        // Bytes, not chars: no slice can fall inside a character.
        let host = host.trim_end_matches('.').as_bytes();
        let suffix = self.host.as_bytes();
        let port_ok = self.port.map_or(port == default_port, |want| want == port);
        let host_ok = if self.wildcard {
            host.len() > suffix.len() + 1
                && host[host.len() - suffix.len() - 1] == b'.'
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        } else {
            host.eq_ignore_ascii_case(suffix)
        };
        port_ok && host_ok
    }
}

impl Serialize for HostPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HostPattern, D::Error> {
        let text = String::deserialize(d)?;
        HostPattern::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whether any pattern of a grant allows `host:port` over this scheme.
pub fn host_allowed(grant: &[HostPattern], host: &str, port: u16, https: bool) -> bool {
    grant.iter().any(|p| p.allows(host, port, https))
}

/// The intersection of a grant with a policy's patterns: pairwise, the
/// narrower of two overlapping patterns survives, once.
pub fn intersect(mine: &[HostPattern], theirs: &[HostPattern]) -> Vec<HostPattern> {
    let mut kept: Vec<HostPattern> = Vec::new();
    for m in mine {
        for t in theirs {
            let survivor = if t.covers(m) {
                m
            } else if m.covers(t) {
                t
            } else {
                continue;
            };
            if !kept.contains(survivor) {
                kept.push(survivor.clone());
            }
        }
    }
    kept
}

/// A narrowing: every wanted pattern must be covered by the grant.
pub fn narrow(mine: &[HostPattern], want: &[HostPattern]) -> Result<Vec<HostPattern>, String> {
    match want.iter().find(|w| !mine.iter().any(|m| m.covers(w))) {
        Some(extra) => Err(format!("network {:?} is not within the grant", extra.as_str())),
        None => Ok(want.to_vec()),
    }
}

/// The operator's `network.allow_private`: address ranges tools may reach
/// although they are not globally routable. Parsed once, from the config;
/// an entry that is not a CIDR is an error naming it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrivateRanges(Vec<IpNet>);

impl PrivateRanges {
    pub fn parse(entries: &[impl AsRef<str>]) -> Result<PrivateRanges, String> {
        let nets = entries.iter().map(|e| {
            let e = e.as_ref();
            e.parse::<IpNet>().map_err(|_| format!("{e:?} is not a CIDR like \"10.0.0.0/8\""))
        });
        Ok(PrivateRanges(nets.collect::<Result<_, _>>()?))
    }

    fn covers(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl<'de> Deserialize<'de> for PrivateRanges {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PrivateRanges, D::Error> {
        PrivateRanges::parse(&Vec::<String>::deserialize(d)?).map_err(serde::de::Error::custom)
    }
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

/// Whether a tool may connect to `ip`: globally routable, or covered by one
/// of the operator's private ranges. Mapped forms are unwrapped first so
/// `::ffff:127.0.0.1` is checked as `127.0.0.1`.
pub fn address_allowed(ip: IpAddr, allow_private: &PrivateRanges) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    is_global(ip) || allow_private.covers(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str]) -> Vec<HostPattern> {
        list.iter().map(|p| HostPattern::parse(p).unwrap()).collect()
    }

    #[test]
    fn a_pattern_covers_exactly_the_patterns_inside_it() {
        let cases = [
            ("api.example.com", "api.example.com", true),
            ("API.example.com", "api.EXAMPLE.com", true),
            ("api.example.com", "other.example.com", false),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "*.b.example.com", true),
            ("*.example.com", "*.example.com", true),
            ("a.example.com", "*.example.com", false),
            ("api.example.com", "api.example.com:8443", false),
            ("api.example.com:8443", "api.example.com:8443", true),
            ("api.example.com:8443", "api.example.com", false),
            ("*.evil.com", "notevil.com", false),
            ("*.example.com", "a.example.com.evil.com", false),
        ];
        for (have, want, expected) in cases {
            let (h, w) = (HostPattern::parse(have).unwrap(), HostPattern::parse(want).unwrap());
            assert_eq!(h.covers(&w), expected, "{have} covers {want}");
        }
    }

    #[test]
    fn a_pattern_that_is_not_a_host_name_is_refused() {
        for bad in
            ["", "*", "*.", "http://x.com", "a b.com", "x.com:0", "x.com:99999", "-x.com", "x..com", "x.com/path"]
        {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_request_matches_a_pattern_on_its_host_and_the_schemes_default_port() {
        let grant = patterns(&["api.example.com", "*.example.org:8443", "127.0.0.1:9000"]);
        let cases = [
            ("api.example.com", 443, true, true),
            ("API.Example.com.", 443, true, true),
            ("api.example.com", 80, false, true),
            ("api.example.com", 80, true, false),
            ("api.example.com", 8443, true, false),
            ("x.example.org", 8443, true, true),
            ("X.EXAMPLE.ORG", 8443, true, true),
            ("example.org", 8443, true, false),
            (".example.org", 8443, true, false),
            ("x.example.org", 443, true, false),
            ("xexample.org", 8443, true, false),
            ("evil.com", 443, true, false),
            ("ü.example.org", 8443, true, true),
            ("api.example.cöm", 443, true, false),
            ("api.example.com.evil.com", 443, true, false),
            ("127.0.0.1", 9000, false, true),
            ("127.0.0.1", 9001, false, false),
        ];
        for (host, port, https, expected) in cases {
            assert_eq!(host_allowed(&grant, host, port, https), expected, "{host}:{port} https={https}");
        }
    }

    #[test]
    fn a_pattern_is_shown_as_written_and_read_back_parsed() {
        let p: HostPattern = serde_json::from_str("\"API.example.com:8443\"").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("api.example.com", Some(8443)));
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"API.example.com:8443\"");
        let bad = serde_json::from_str::<HostPattern>("\"a b.com\"").unwrap_err().to_string();
        assert!(bad.contains("is not a host name"), "{bad}");
    }

    #[test]
    fn intersecting_keeps_the_narrower_of_overlapping_patterns() {
        let cases: [(&[&str], &[&str], &[&str]); 5] = [
            (&["api.example.com", "other.org"], &["*.example.com"], &["api.example.com"]),
            (&["*.example.com"], &["a.example.com"], &["a.example.com"]),
            (&["*.example.com"], &["*.example.com", "a.example.com"], &["*.example.com", "a.example.com"]),
            (&["api.example.com"], &["api.example.com:8443"], &[]),
            (&["a.com"], &[], &[]),
        ];
        for (mine, theirs, expected) in cases {
            assert_eq!(intersect(&patterns(mine), &patterns(theirs)), patterns(expected), "{mine:?} ∩ {theirs:?}");
        }
    }

    #[test]
    fn narrowing_refuses_a_pattern_outside_the_grant() {
        let grant = patterns(&["*.example.com"]);
        assert_eq!(narrow(&grant, &patterns(&["a.example.com"])), Ok(patterns(&["a.example.com"])));
        assert!(narrow(&grant, &patterns(&["example.com"])).is_err());
        assert!(narrow(&grant, &patterns(&["a.example.com:8443"])).is_err());
    }

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
        let none = PrivateRanges::default();
        for addr in blocked {
            let ip: IpAddr = addr.parse().unwrap();
            assert!(!is_global(ip), "{addr} must not count as global");
            assert!(!address_allowed(ip, &none), "{addr} must be refused");
        }
        for addr in ["1.1.1.1", "8.8.8.8", "100.128.0.1", "172.32.0.1", "2606:4700::1111", "::ffff:1.1.1.1"] {
            assert!(address_allowed(addr.parse().unwrap(), &none), "{addr} is public");
        }
    }

    #[test]
    fn allow_private_opens_exactly_its_ranges() {
        let allow = PrivateRanges::parse(&["127.0.0.0/8", "fd00::/8"]).unwrap();
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
    fn an_allow_private_entry_that_is_not_a_cidr_is_an_error_naming_it() {
        for bad in ["10.0.0.0/33", "10.0.0.0", "fc00::/129", "localhost/8", ""] {
            let e = PrivateRanges::parse(&[bad]).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        assert!(PrivateRanges::parse(&["fc00::/7", "0.0.0.0/0"]).is_ok());
    }
}
