//! The one table of what a component may import: which capability each
//! import belongs to, and which grant it needs to load. The loader refuses
//! a bundle by it (`runtime::loader`) and `bulkhead review` reports by it
//! (BH001, BH002), so the two can never disagree.

use super::Grant;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    State,
    Secrets,
    Session,
    Log,
    Filesystem,
    OutboundHttp,
    Sockets,
    Clocks,
    Random,
    Cli,
    Io,
    /// Not provided by the host: the bundle is refused at load.
    Unknown,
}

impl Capability {
    /// The capability an import such as `wasi:http/outgoing-handler@0.2.3`
    /// belongs to. Standard WASI interfaces (cli, clocks, random,
    /// filesystem, io, sockets) are linked for every tool but give nothing
    /// beyond the grants: no preopens, no environment, every socket
    /// address refused.
    pub fn of_import(name: &str) -> Capability {
        let (package, rest) = name.split_once('/').unwrap_or((name, ""));
        let interface = rest.split('@').next().unwrap_or("");
        match (package, interface) {
            ("bulkhead:tool", "state") => Capability::State,
            ("bulkhead:tool", "secrets") => Capability::Secrets,
            ("bulkhead:tool", "session") => Capability::Session,
            ("bulkhead:tool", "log") => Capability::Log,
            ("wasi:filesystem", _) => Capability::Filesystem,
            ("wasi:http", _) => Capability::OutboundHttp,
            ("wasi:sockets", _) => Capability::Sockets,
            ("wasi:clocks", _) => Capability::Clocks,
            ("wasi:random", _) => Capability::Random,
            ("wasi:cli", _) => Capability::Cli,
            ("wasi:io", _) => Capability::Io,
            _ => Capability::Unknown,
        }
    }
}

/// Why a component cannot load with an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The host links nothing by that name.
    NotProvided,
    /// The import is linked only for a tool whose manifest grants this.
    NeedsGrant(&'static str),
}

/// Whether a component with this manifest grant may import `name`; its
/// capability when it may.
pub fn check(name: &str, manifest: &Grant) -> Result<Capability, Refusal> {
    match Capability::of_import(name) {
        Capability::Unknown => Err(Refusal::NotProvided),
        Capability::OutboundHttp if manifest.network.is_empty() => Err(Refusal::NeedsGrant("network")),
        capability => Ok(capability),
    }
}

impl Refusal {
    /// The loader's message for an import refused this way.
    pub fn message(self, import: &str) -> String {
        match self {
            Refusal::NotProvided => format!("imports {import}, which this host does not provide"),
            Refusal::NeedsGrant(grant) => format!("imports {import} but the manifest grants no {grant}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::network::HostPattern;

    #[test]
    fn an_import_loads_only_when_the_host_provides_it_and_the_manifest_grants_what_it_needs() {
        let none = Grant::default();
        let network = Grant { network: vec![HostPattern::parse("api.example.com").unwrap()], ..Grant::default() };
        let cases = [
            ("bulkhead:tool/state@0.1.0", &none, Ok(Capability::State)),
            ("bulkhead:tool/secrets@0.1.0", &none, Ok(Capability::Secrets)),
            ("bulkhead:tool/admin@0.1.0", &none, Err(Refusal::NotProvided)),
            ("wasi:http/outgoing-handler@0.2.3", &none, Err(Refusal::NeedsGrant("network"))),
            ("wasi:http/outgoing-handler@0.2.3", &network, Ok(Capability::OutboundHttp)),
            ("wasi:http/types@0.2.12", &network, Ok(Capability::OutboundHttp)),
            ("wasi:filesystem/preopens@0.2.3", &none, Ok(Capability::Filesystem)),
            ("wasi:sockets/tcp@0.2.3", &none, Ok(Capability::Sockets)),
            ("wasi:cli/environment@0.2.3", &none, Ok(Capability::Cli)),
            ("wasi:keyvalue/store@0.2.0", &network, Err(Refusal::NotProvided)),
            ("env", &none, Err(Refusal::NotProvided)),
        ];
        for (import, grant, expected) in cases {
            assert_eq!(check(import, grant), expected, "{import}");
        }
    }
}
