//! Property tests of what the host decodes from outside (issue 30): the
//! operator's config, a bundle's manifest, grant patterns, and the audit
//! chain's verification. Bounded (proptest's default 256 cases each, no
//! fork), so they run in every `cargo test`.
//!
//! The corpus is the repository's own examples (`examples/bulkhead.toml`,
//! the example tools' manifests), mutated byte by byte; failures proptest
//! finds are kept in `tests/decoders.proptest-regressions` and replayed
//! first.

use bulkhead::config::{Config, Limits};
use bulkhead::manifest::Manifest;
use bulkhead::model::AuditEvent;
use bulkhead::policy::network::{HostPattern, PrivateRanges};
use bulkhead::store::chain::{GENESIS, Verifier, hash_of};
use proptest::prelude::*;
use serde_json::json;
use std::path::Path;

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The seeds: real texts of each kind.
fn configs() -> Vec<String> {
    vec![repo_file("examples/bulkhead.toml"), String::new()]
}

fn manifests() -> Vec<String> {
    ["http-fetch", "counter", "notes", "reconcile"]
        .iter()
        .map(|t| repo_file(&format!("guest-tools/{t}/tool.toml")))
        .collect()
}

/// One edit of a text: replace, insert or delete a byte at a position.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    // Bytes that matter to TOML most often, and any byte.
    let byte = prop_oneof![prop::sample::select(b"[]{}=\"'.,#\n\\ 0-_".to_vec()), any::<u8>(),];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(at, b)| Edit::Replace(at, b)),
        (any::<usize>(), byte).prop_map(|(at, b)| Edit::Insert(at, b)),
        any::<usize>().prop_map(Edit::Delete),
    ]
}

fn mutate(seed: &str, edits: &[Edit]) -> String {
    let mut bytes = seed.as_bytes().to_vec();
    for e in edits {
        let len = bytes.len();
        match *e {
            Edit::Replace(at, b) if len > 0 => bytes[at % len] = b,
            Edit::Insert(at, b) => bytes.insert(at % (len + 1), b),
            Edit::Delete(at) if len > 0 => {
                bytes.remove(at % len);
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A verified chain of `n` events of one session.
fn chain(n: usize) -> Vec<AuditEvent> {
    let mut prev = GENESIS.to_string();
    (1..=n as i64)
        .map(|seq| {
            let mut e = AuditEvent {
                seq,
                at: format!("2026-12-08T00:00:{:02}.000Z", seq % 60),
                session: "s1".into(),
                kind: if seq % 2 == 0 { "call_finished" } else { "call_requested" }.into(),
                actor: "agent".into(),
                call: (seq > 1).then(|| format!("c{seq}")),
                data: json!({ "tool": "counter", "n": seq, "text": "ünï \"q\"" }),
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            e.hash = hash_of(&e);
            prev = e.hash.clone();
            e
        })
        .collect()
}

fn verify(events: &[AuditEvent]) -> Result<u64, String> {
    let mut v = Verifier::default();
    for e in events {
        v.check(e).map_err(|b| format!("seq {}: {}", b.seq, b.reason))?;
    }
    Ok(v.checked())
}

proptest! {
    /// Any text: the config parser answers Ok or a message, never panics.
    #[test]
    fn any_config_text_is_parsed_or_refused(text in "\\PC{0,400}") {
        let _ = Config::parse(&text, Path::new("/etc/bulkhead"));
    }

    /// The example config, mutated: still no panic, and an error is a
    /// message that names something (not empty).
    #[test]
    fn a_mutated_config_is_parsed_or_refused_with_a_message(
        seed in prop::sample::select(configs()),
        edits in prop::collection::vec(edit(), 1..8),
    ) {
        let text = mutate(&seed, &edits);
        if let Err(e) = Config::parse(&text, Path::new("/etc/bulkhead")) {
            prop_assert!(!e.trim().is_empty());
        }
    }

    #[test]
    fn any_manifest_text_is_parsed_or_refused(text in "\\PC{0,400}") {
        let _ = Manifest::parse(&text, &Limits::default());
    }

    #[test]
    fn a_mutated_manifest_is_parsed_or_refused_with_a_message(
        seed in prop::sample::select(manifests()),
        edits in prop::collection::vec(edit(), 1..8),
    ) {
        let text = mutate(&seed, &edits);
        match Manifest::parse(&text, &Limits::default()) {
            Ok(m) => prop_assert!(!m.name.is_empty()),
            Err(e) => prop_assert!(!e.trim().is_empty()),
        }
    }

    /// Grant patterns and private ranges: parsed or refused, never a panic,
    /// and a pattern that parses can be matched.
    #[test]
    fn host_patterns_and_ranges_are_parsed_or_refused(text in "\\PC{0,80}", port in any::<u16>()) {
        if let Ok(p) = HostPattern::parse(&text) {
            let _ = p.allows("example.com", port, true);
        }
        let _ = PrivateRanges::parse(&[text.as_str()]);
    }

    /// Every change to any field of any stored event breaks verification,
    /// at that event or the next; the untouched chain verifies.
    #[test]
    fn any_tampering_with_a_chain_is_found(n in 1usize..12, at in any::<usize>(), field in 0usize..8) {
        let mut events = chain(n);
        prop_assert_eq!(verify(&events), Ok(n as u64));
        let i = at % n;
        let e = &mut events[i];
        match field {
            0 => e.seq += 1,
            1 => e.at.push('1'),
            2 => e.session.push('x'),
            3 => e.kind.push('x'),
            4 => e.actor.push('x'),
            5 => e.call = Some(format!("{}x", e.call.clone().unwrap_or_default())),
            6 => e.data = json!({ "tampered": e.data.clone() }),
            _ => e.prev_hash = e.hash.clone(),
        }
        let found = verify(&events);
        prop_assert!(found.is_err(), "field {} of event {} changed unnoticed", field, i + 1);
    }
}
