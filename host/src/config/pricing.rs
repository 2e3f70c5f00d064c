//! `[pricing]`: a price per unit of usage, so a session's usage carries its
//! cost. Every price defaults to 0 (nothing is priced); prices are finite
//! and not negative, so a cost only grows with use.

use crate::model::SessionUsage;
use serde::{Deserialize, Serialize};

const MIB: f64 = 1_048_576.0;
/// Longest accepted `currency` (ISO 4217 codes are 3; allow a few more).
const MAX_CURRENCY: usize = 16;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    /// What the cost is counted in; only a label.
    pub currency: String,
    /// Per call finished (whatever its status).
    pub call: f64,
    /// Per million units of Wasm fuel.
    pub fuel_million: f64,
    /// Per MiB of memory (a call's peak) held for one second of its run.
    pub memory_mib_second: f64,
    /// Per MiB of tool state and messages kept for one hour.
    pub stored_mib_hour: f64,
    /// Per MiB of outbound HTTP (the bytes `egress_bytes` counts).
    pub egress_mib: f64,
}

impl Default for PricingConfig {
    fn default() -> PricingConfig {
        PricingConfig {
            currency: "USD".into(),
            call: 0.0,
            fuel_million: 0.0,
            memory_mib_second: 0.0,
            stored_mib_hour: 0.0,
            egress_mib: 0.0,
        }
    }
}

impl PricingConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        let c = &self.currency;
        if c.is_empty() || c.len() > MAX_CURRENCY || !c.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!(
                "pricing.currency = {c:?} must be 1 to {MAX_CURRENCY} letters or digits, like \"USD\""
            ));
        }
        for (key, price) in self.prices() {
            if !price.is_finite() || price < 0.0 {
                return Err(format!("pricing.{key} = {price} must be a number of 0 or more"));
            }
        }
        Ok(())
    }

    fn prices(&self) -> [(&'static str, f64); 5] {
        [
            ("call", self.call),
            ("fuel_million", self.fuel_million),
            ("memory_mib_second", self.memory_mib_second),
            ("stored_mib_hour", self.stored_mib_hour),
            ("egress_mib", self.egress_mib),
        ]
    }

    /// The cost of `usage` at these prices.
    pub fn cost(&self, u: &SessionUsage) -> f64 {
        u.calls as f64 * self.call
            + u.fuel as f64 / 1e6 * self.fuel_million
            + u.memory_mib_seconds * self.memory_mib_second
            + u.stored_mib_hours * self.stored_mib_hour
            + u.egress_bytes as f64 / MIB * self.egress_mib
    }

    /// `usage` with its `cost` and `currency` filled in.
    pub fn price(&self, usage: &mut SessionUsage) {
        usage.cost = self.cost(usage);
        usage.currency = self.currency.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PricingConfig, String> {
        let p: PricingConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        p.validate().map(|()| p)
    }

    #[test]
    fn prices_are_checked() {
        let cases: &[(&str, Option<&str>)] = &[
            ("", None),
            ("currency = \"EUR\"\ncall = 0.001", None),
            ("call = -1.0", Some("pricing.call = -1 must be a number of 0 or more")),
            ("egress_mib = nan", Some("pricing.egress_mib = NaN")),
            ("fuel_million = inf", Some("pricing.fuel_million = inf")),
            ("currency = \"\"", Some("pricing.currency")),
            ("currency = \"U S D\"", Some("pricing.currency")),
            ("currency = \"USDUSDUSDUSDUSDUSD\"", Some("pricing.currency")),
            ("calls = 1.0", Some("unknown field `calls`")),
            ("call = \"1\"", Some("invalid type")),
        ];
        for (text, want) in cases {
            match (parse(text), want) {
                (Ok(_), None) => {}
                (Err(e), Some(w)) => assert!(e.contains(w), "{text:?}: {e}"),
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn cost_is_units_times_prices() {
        let p = PricingConfig {
            currency: "EUR".into(),
            call: 0.01,
            fuel_million: 0.5,
            memory_mib_second: 0.25,
            stored_mib_hour: 2.0,
            egress_mib: 4.0,
        };
        let mut u = SessionUsage {
            calls: 3,
            fuel: 2_000_000,
            memory_mib_seconds: 4.0,
            stored_mib_hours: 0.5,
            egress_bytes: 512 * 1024,
            ..SessionUsage::default()
        };
        p.price(&mut u);
        assert!((u.cost - (0.03 + 1.0 + 1.0 + 1.0 + 2.0)).abs() < 1e-12, "{}", u.cost);
        assert_eq!(u.currency, "EUR");
        assert_eq!(PricingConfig::default().cost(&u), 0.0, "unpriced by default");
    }
}
