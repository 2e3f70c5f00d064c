//! The audit chain's hash and its verification (contract §9), the same
//! for every backend.
//!
//! `hash = sha256(prev_hash || canonical JSON of the event without hash)`;
//! canonical JSON is compact with keys sorted (serde_json's default map is
//! ordered). The first event of a session chains to [`GENESIS`].

use crate::model::AuditEvent;
use sha2::{Digest, Sha256};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of an event from its fields (all but `hash`).
pub fn hash_of(e: &AuditEvent) -> String {
    hash_with_data(e, &e.data.to_string())
}

/// `hash_of` with the event's data already serialized (compact JSON).
///
/// The canonical form is written field by field, keys in sorted order,
/// exactly as serde_json prints a map of these fields (checked by a test);
/// building a `Value` for every event cost more than the append's SQL.
pub(crate) fn hash_with_data(e: &AuditEvent, data: &str) -> String {
    fn field(out: &mut Vec<u8>, key: &str, value: &impl serde::Serialize) {
        out.extend_from_slice(key.as_bytes());
        serde_json::to_writer(&mut *out, value).expect("strings and integers serialize");
    }
    let mut body = Vec::with_capacity(256 + data.len());
    field(&mut body, "{\"actor\":", &e.actor);
    field(&mut body, ",\"at\":", &e.at);
    if let Some(call) = &e.call {
        field(&mut body, ",\"call\":", call);
    }
    body.extend_from_slice(b",\"data\":");
    body.extend_from_slice(data.as_bytes());
    field(&mut body, ",\"kind\":", &e.kind);
    field(&mut body, ",\"prev_hash\":", &e.prev_hash);
    field(&mut body, ",\"seq\":", &e.seq);
    field(&mut body, ",\"session\":", &e.session);
    body.push(b'}');
    let mut h = Sha256::new();
    h.update(e.prev_hash.as_bytes());
    h.update(&body);
    hex::encode(h.finalize())
}

/// A break in a chain: the first record that does not verify.
#[derive(Debug, Clone, PartialEq)]
pub struct Break {
    pub session: String,
    pub seq: i64,
    pub reason: String,
}

/// Checks events given in (session, seq) order, chain after chain.
pub struct Verifier {
    checked: u64,
    session: String,
    expect_seq: i64,
    expect_prev: String,
}

impl Default for Verifier {
    fn default() -> Verifier {
        Verifier { checked: 0, session: String::new(), expect_seq: 1, expect_prev: GENESIS.to_string() }
    }
}

impl Verifier {
    /// The next event; the break it makes, if it does not verify.
    pub fn check(&mut self, e: &AuditEvent) -> Result<(), Break> {
        if e.session != self.session {
            (self.session, self.expect_seq, self.expect_prev) = (e.session.clone(), 1, GENESIS.to_string());
        }
        let fail = |reason: &str| Err(Break { session: e.session.clone(), seq: e.seq, reason: reason.into() });
        if e.seq != self.expect_seq {
            return fail(&format!("expected seq {}: a record is missing or reordered", self.expect_seq));
        }
        if e.prev_hash != self.expect_prev {
            return fail("prev_hash does not match the previous record's hash");
        }
        if hash_of(e) != e.hash {
            return fail("hash does not match the record's contents");
        }
        (self.expect_seq, self.expect_prev) = (e.seq + 1, e.hash.clone());
        self.checked += 1;
        Ok(())
    }

    /// Events verified so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }
}
