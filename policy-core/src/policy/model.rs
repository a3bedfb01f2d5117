//! Desired state as data: the SQL facts of a connection and the [`Policy`] they give.
//!
//! Which facts give which state (documented in docs/ARCHITECTURE.md, tested below), first match
//! wins:
//!
//! | facts | state |
//! |---|---|
//! | no row, status DISABLED, DELETED or UNCLAIMED | TERMINATE |
//! | manual_block, customer blocked, or status SUSPENDED | BLOCKED |
//! | status PREPROVISIONED (not yet claimed) | RESTRICTED (reason `unclaimed`) |
//! | expires_at ≤ now | RESTRICTED (reason `expired`) |
//! | quota set and usage in the current period ≥ quota | RESTRICTED (reason `quota_exceeded`) |
//! | otherwise (CLAIMED) | FULL |
//!
//! Speed limits apply in FULL and RESTRICTED; per-user routes and policy-routing membership only
//! in FULL. GATED is the state before any policy is known (connect_pending_v4).

use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Preprovisioned,
    Claimed,
    Suspended,
    Unclaimed,
    Disabled,
    Deleted,
}

impl Status {
    /// The value as `vpn_connections.status` stores it.
    pub fn as_sql(self) -> &'static str {
        match self {
            Status::Preprovisioned => "PREPROVISIONED",
            Status::Claimed => "CLAIMED",
            Status::Suspended => "SUSPENDED",
            Status::Unclaimed => "UNCLAIMED",
            Status::Disabled => "DISABLED",
            Status::Deleted => "DELETED",
        }
    }
}

impl FromStr for Status {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "PREPROVISIONED" => Status::Preprovisioned,
            "CLAIMED" => Status::Claimed,
            "SUSPENDED" => Status::Suspended,
            "UNCLAIMED" => Status::Unclaimed,
            "DISABLED" => Status::Disabled,
            "DELETED" => Status::Deleted,
            _ => return Err(()),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaPeriod {
    Day,
    Month,
    Total,
}

impl FromStr for QuotaPeriod {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "day" => QuotaPeriod::Day,
            "month" => QuotaPeriod::Month,
            "total" => QuotaPeriod::Total,
            _ => return Err(()),
        })
    }
}

/// A per-user static route (R901). `gateway: None` routes via the session's interface
/// (point-to-point: the peer); `table: None` is the main table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RouteSpec {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub table: Option<u32>,
    pub metric: Option<u32>,
}

/// Policy routing for one session (R902): traffic from the client goes through `table`, whose
/// default route is `via` on `dev`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PbrSpec {
    pub name: String,
    pub table: u32,
    pub via: Ipv4Addr,
    pub dev: String,
    pub priority: u32,
}

/// Everything SQL says about one connection, as of `db_now`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionFacts {
    pub id: i64,
    pub customer_id: Option<i64>,
    pub login: String,
    pub status: Status,
    pub rate_down_kbit: Option<u32>,
    pub rate_up_kbit: Option<u32>,
    pub quota_bytes: Option<u64>,
    pub quota_period: QuotaPeriod,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub manual_block: bool,
    pub customer_blocked: bool,
    /// Octets (in + out) in the current quota period.
    pub used_bytes: u64,
    /// The database's clock (Unix seconds) when the facts were read.
    pub db_now: i64,
    pub routes: Vec<RouteSpec>,
    pub pbr: Vec<PbrSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PolicyState {
    Gated,
    Full,
    Restricted,
    Blocked,
    Terminate,
}

impl PolicyState {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyState::Gated => "GATED",
            PolicyState::Full => "FULL",
            PolicyState::Restricted => "RESTRICTED",
            PolicyState::Blocked => "BLOCKED",
            PolicyState::Terminate => "TERMINATE",
        }
    }
}

impl std::fmt::Display for PolicyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Active,
    NoRow,
    Disabled,
    Deleted,
    Unclaimed,
    ManualBlock,
    CustomerBlocked,
    Suspended,
    Expired,
    QuotaExceeded,
    Pending,
}

/// Speed limits in kbit/s; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Speed {
    /// To the client (pppX egress).
    pub down_kbit: Option<u32>,
    /// From the client (pppX ingress, shaped on the session's IFB).
    pub up_kbit: Option<u32>,
}

impl Speed {
    pub fn is_unlimited(&self) -> bool {
        self.down_kbit.is_none() && self.up_kbit.is_none()
    }
}

/// The policy for one session: a plain value, diffed against the kernel by the planner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub state: PolicyState,
    pub reason: Reason,
    pub speed: Speed,
    pub routes: Vec<RouteSpec>,
    pub pbr: Vec<PbrSpec>,
}

impl Policy {
    /// The connect gate: drop everything, nothing else installed.
    pub fn gated() -> Policy {
        Policy {
            state: PolicyState::Gated,
            reason: Reason::Pending,
            speed: Speed::default(),
            routes: vec![],
            pbr: vec![],
        }
    }

    fn bare(state: PolicyState, reason: Reason) -> Policy {
        Policy { state, reason, speed: Speed::default(), routes: vec![], pbr: vec![] }
    }
}

/// Computes the policy from the facts (`None`: the connection has no row).
/// A quota is reached when usage in the current period is at least the quota. The one rule: the
/// state decision below and the collector's quota trigger (`db::accounting::QuotaUse::over`)
/// both ask it.
pub fn quota_reached(quota_bytes: Option<u64>, used_bytes: u64) -> bool {
    quota_bytes.is_some_and(|q| used_bytes >= q)
}

pub fn decide(facts: Option<&ConnectionFacts>) -> Policy {
    let Some(f) = facts else { return Policy::bare(PolicyState::Terminate, Reason::NoRow) };
    match f.status {
        Status::Disabled => return Policy::bare(PolicyState::Terminate, Reason::Disabled),
        Status::Deleted => return Policy::bare(PolicyState::Terminate, Reason::Deleted),
        Status::Unclaimed => return Policy::bare(PolicyState::Terminate, Reason::Unclaimed),
        _ => {}
    }
    if f.manual_block {
        return Policy::bare(PolicyState::Blocked, Reason::ManualBlock);
    }
    if f.customer_blocked {
        return Policy::bare(PolicyState::Blocked, Reason::CustomerBlocked);
    }
    if f.status == Status::Suspended {
        return Policy::bare(PolicyState::Blocked, Reason::Suspended);
    }
    let speed = Speed { down_kbit: f.rate_down_kbit, up_kbit: f.rate_up_kbit };
    let restricted = |reason| Policy { state: PolicyState::Restricted, reason, speed, routes: vec![], pbr: vec![] };
    if f.status == Status::Preprovisioned {
        return restricted(Reason::Unclaimed);
    }
    if f.expires_at.is_some_and(|t| t <= f.db_now) {
        return restricted(Reason::Expired);
    }
    if quota_reached(f.quota_bytes, f.used_bytes) {
        return restricted(Reason::QuotaExceeded);
    }
    let mut routes = f.routes.clone();
    routes.sort();
    routes.dedup();
    let mut pbr = f.pbr.clone();
    pbr.sort();
    pbr.dedup();
    Policy { state: PolicyState::Full, reason: Reason::Active, speed, routes, pbr }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn facts(id: i64) -> ConnectionFacts {
        ConnectionFacts {
            id,
            customer_id: Some(1),
            login: format!("user{id}"),
            status: Status::Claimed,
            rate_down_kbit: Some(8000),
            rate_up_kbit: Some(2000),
            quota_bytes: None,
            quota_period: QuotaPeriod::Month,
            expires_at: None,
            manual_block: false,
            customer_blocked: false,
            used_bytes: 0,
            db_now: 1_700_000_000,
            routes: vec![RouteSpec {
                dst: "192.168.50.0/24".parse().unwrap(),
                gateway: None,
                table: None,
                metric: None,
            }],
            pbr: vec![],
        }
    }

    #[test]
    fn claimed_is_full_with_speed_and_routes() {
        let p = decide(Some(&facts(1)));
        assert_eq!(p.state, PolicyState::Full);
        assert_eq!(p.speed, Speed { down_kbit: Some(8000), up_kbit: Some(2000) });
        assert_eq!(p.routes.len(), 1);
    }

    type Edit = Box<dyn Fn(&mut ConnectionFacts)>;

    #[test]
    fn the_state_table() {
        let cases: Vec<(Edit, PolicyState, Reason)> = vec![
            (Box::new(|f| f.status = Status::Disabled), PolicyState::Terminate, Reason::Disabled),
            (Box::new(|f| f.status = Status::Deleted), PolicyState::Terminate, Reason::Deleted),
            (Box::new(|f| f.status = Status::Unclaimed), PolicyState::Terminate, Reason::Unclaimed),
            (Box::new(|f| f.manual_block = true), PolicyState::Blocked, Reason::ManualBlock),
            (Box::new(|f| f.customer_blocked = true), PolicyState::Blocked, Reason::CustomerBlocked),
            (Box::new(|f| f.status = Status::Suspended), PolicyState::Blocked, Reason::Suspended),
            (Box::new(|f| f.status = Status::Preprovisioned), PolicyState::Restricted, Reason::Unclaimed),
            (Box::new(|f| f.expires_at = Some(f.db_now)), PolicyState::Restricted, Reason::Expired),
            (Box::new(|f| f.expires_at = Some(f.db_now + 1)), PolicyState::Full, Reason::Active),
            (
                Box::new(|f| {
                    f.quota_bytes = Some(1000);
                    f.used_bytes = 1000
                }),
                PolicyState::Restricted,
                Reason::QuotaExceeded,
            ),
            (
                Box::new(|f| {
                    f.quota_bytes = Some(1000);
                    f.used_bytes = 999
                }),
                PolicyState::Full,
                Reason::Active,
            ),
            // Precedence: a blocked, expired, over-quota connection is BLOCKED; disabled wins over all.
            (
                Box::new(|f| {
                    f.manual_block = true;
                    f.expires_at = Some(0);
                    f.quota_bytes = Some(0)
                }),
                PolicyState::Blocked,
                Reason::ManualBlock,
            ),
            (
                Box::new(|f| {
                    f.manual_block = true;
                    f.status = Status::Disabled
                }),
                PolicyState::Terminate,
                Reason::Disabled,
            ),
        ];
        for (i, (edit, state, reason)) in cases.into_iter().enumerate() {
            let mut f = facts(1);
            edit(&mut f);
            let p = decide(Some(&f));
            assert_eq!((p.state, p.reason), (state, reason), "case {i}");
            if state != PolicyState::Full {
                assert!(p.routes.is_empty() && p.pbr.is_empty(), "case {i}: routes only in FULL");
            }
            if matches!(state, PolicyState::Blocked | PolicyState::Terminate) {
                assert!(p.speed.is_unlimited(), "case {i}: no shaping when nothing passes");
            }
        }
        assert_eq!(decide(None).state, PolicyState::Terminate);
    }
}
