//! Priced usage: each session's units at the `[pricing]` prices, and the
//! report behind `GET /v1/usage` and `bulkhead usage`.

use super::Service;
use super::error::{Result, ServiceError};
use crate::auth::Principal;
use crate::config::PricingConfig;
use crate::model::Session;
use crate::store::{PrincipalUsage, UsageQuery};
use serde::Serialize;
use std::time::{Duration, SystemTime};

/// `GET /v1/usage`: whose sessions, created in which window.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// One principal (others than one's own: admins only); all for admins
    /// when absent.
    pub principal: Option<String>,
    /// Sessions created at or after: a day (`YYYY-MM-DD`, UTC) or an RFC 3339 time.
    pub from: Option<String>,
    /// Sessions created before this time, or on or before this day.
    pub to: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct UsageReport {
    pub currency: String,
    pub prices: PricingConfig,
    /// The window as applied (RFC 3339; `null`: open).
    pub principal: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub generated_at: String,
    pub principals: Vec<PrincipalUsage>,
    pub total: PrincipalUsage,
}

impl Service {
    /// `s` with its usage's cost at the configured prices.
    pub fn priced(&self, mut s: Session) -> Session {
        self.config.pricing.price(&mut s.usage);
        s
    }

    /// The usage report `p` may see: its own sessions, or anyone's for admins.
    pub async fn usage_report(&self, p: &Principal, params: UsageParams) -> Result<UsageReport> {
        let wanted = params.principal.as_deref().map(str::trim).filter(|w| !w.is_empty());
        let principal = match wanted {
            Some(w) if w != p.name && !p.is_admin() => {
                return Err(ServiceError::forbidden("forbidden", "only admins see other principals' usage"));
            }
            Some(w) => Some(w.to_string()),
            None if p.is_admin() => None,
            None => Some(p.name.clone()),
        };
        let from = bound("from", params.from.as_deref(), false)?;
        let to = bound("to", params.to.as_deref(), true)?;
        if let (Some(f), Some(t)) = (&from, &to)
            && f >= t
        {
            return Err(ServiceError::bad_request("from must be before to"));
        }
        let query = UsageQuery { principal: principal.clone(), from: from.clone(), to: to.clone() };
        let mut principals = self.store.usage(query).await?;
        let pricing = &self.config.pricing;
        let mut total = PrincipalUsage { principal: "*".into(), ..PrincipalUsage::default() };
        for line in &mut principals {
            pricing.price(&mut line.usage);
            total.sessions += line.sessions;
            total.deleted_sessions += line.deleted_sessions;
            total.usage.add(&line.usage);
        }
        pricing.price(&mut total.usage);
        Ok(UsageReport {
            currency: pricing.currency.clone(),
            prices: pricing.clone(),
            principal,
            from,
            to,
            generated_at: crate::util::now_rfc3339(),
            principals,
            total,
        })
    }
}

/// A window bound as the store compares it (`now_rfc3339`'s form). A day
/// starts at its midnight (UTC); as the end (`inclusive_day`) it takes the
/// whole day in.
fn bound(what: &str, given: Option<&str>, inclusive_day: bool) -> Result<Option<String>> {
    let Some(v) = given.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let bad = || ServiceError::bad_request(format!("{what} must be a day (YYYY-MM-DD) or an RFC 3339 time"));
    if v.len() > 64 {
        return Err(bad());
    }
    let (time, day) = match humantime::parse_rfc3339_weak(v) {
        Ok(t) => (t, false),
        Err(_) => (humantime::parse_rfc3339_weak(&format!("{v}T00:00:00Z")).map_err(|_| bad())?, true),
    };
    let time = if day && inclusive_day { time + Duration::from_secs(86_400) } else { time };
    if time < SystemTime::UNIX_EPOCH {
        return Err(bad());
    }
    Ok(Some(humantime::format_rfc3339_millis(time).to_string()))
}

#[cfg(test)]
mod tests {
    use super::bound;

    #[test]
    fn window_bounds_take_days_and_times() {
        let cases: &[(&str, bool, Option<&str>)] = &[
            ("2026-12-01", false, Some("2026-12-01T00:00:00.000Z")),
            ("2026-12-01", true, Some("2026-12-02T00:00:00.000Z")),
            ("2026-12-31", true, Some("2027-01-01T00:00:00.000Z")),
            ("2026-12-01T10:30:00Z", true, Some("2026-12-01T10:30:00.000Z")),
            ("2026-12-01T10:30:00.25Z", false, Some("2026-12-01T10:30:00.250Z")),
            ("  ", false, None),
            ("yesterday", false, None),
            ("2026-13-01", false, None),
            ("2026-12-01'; DROP TABLE sessions; --", false, None),
        ];
        for (given, end, want) in cases {
            match (bound("from", Some(given), *end), want) {
                (Ok(got), Some(w)) => assert_eq!(got.as_deref(), Some(*w), "{given:?}"),
                (Ok(None), None) if given.trim().is_empty() => {}
                (Err(e), None) => assert!(e.to_string().contains("from must be"), "{given:?}: {e}"),
                (got, _) => panic!("{given:?}: {got:?}"),
            }
        }
    }
}
