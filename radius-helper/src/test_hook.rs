//! The kernel backends the policy verbs use, with one test hook.
//!
//! TEST HOOK: `PPPGATE_TEST_CRASH_AT=<point>` makes `pppgate` kill itself with SIGKILL at a
//! point inside an apply, so tests prove that a crash mid-apply leaves every session at least as
//! restricted as before and that the next reconcile converges. Like the collector's crash points
//! (same variable) it is read in every build — the tests run the release binary — and it can only
//! make the process that is given it die at the named point; it never changes what is applied.
//! Points:
//! * `apply:after-nft` — right after the first nft transaction is committed;
//! * `apply:after-tc` — right after the first tc change (set or clear);
//! * `apply:after-route` — right after the first route is added.

use std::collections::BTreeSet;

use policy_core::config::GardenEntry;
use policy_core::kernel::{
    Backends, Member, Netlink, Nft, NftNetlink, NftSet, NftState, OwnedRoute, Routes, RoutesNetlink, RulesNetlink,
    SetChange, Shaping, SysctlProc, Tc, TcNetlink, TcState,
};
use policy_core::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashAfter {
    Nft,
    Tc,
    Route,
}

/// The crash point asked for.
fn crash_point() -> Option<CrashAfter> {
    let v = std::env::var("PPPGATE_TEST_CRASH_AT").ok()?;
    match v.as_str() {
        "apply:after-nft" => Some(CrashAfter::Nft),
        "apply:after-tc" => Some(CrashAfter::Tc),
        "apply:after-route" => Some(CrashAfter::Route),
        other => {
            eprintln!("pppgate: ignoring unknown PPPGATE_TEST_CRASH_AT={other:?}");
            None
        }
    }
}

fn crash_if(armed: Option<CrashAfter>, here: CrashAfter) {
    if armed == Some(here) {
        eprintln!("pppgate: PPPGATE_TEST_CRASH_AT: SIGKILL at {here:?}");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        // SIGKILL cannot be caught; this is never reached.
        std::process::abort();
    }
}

/// The real backends (`Netlink`), with the crash hook when a test armed it.
#[derive(Debug)]
pub struct Kernel {
    nft: HookNft,
    tc: HookTc,
    routes: HookRoutes,
    rules: RulesNetlink,
    sysctl: SysctlProc,
}

/// Opens the backends in the current network namespace; nft commits are recorded in the member
/// record of `sessions_dir` (docs/security.md, "Tamper detection and restore").
pub fn kernel(sessions_dir: &std::path::Path) -> Result<Kernel> {
    let n = Netlink::recording_to(sessions_dir)?;
    let crash = crash_point();
    Ok(Kernel {
        nft: HookNft { inner: n.nft, crash },
        tc: HookTc { inner: n.tc, crash },
        routes: HookRoutes { inner: n.routes, crash },
        rules: n.rules,
        sysctl: n.sysctl,
    })
}

#[derive(Debug)]
pub struct HookNft {
    inner: NftNetlink,
    crash: Option<CrashAfter>,
}

impl Nft for HookNft {
    fn ensure_base_with(
        &mut self,
        garden: &[GardenEntry],
        members: &std::collections::BTreeMap<Member, NftSet>,
    ) -> Result<()> {
        self.inner.ensure_base_with(garden, members)
    }
    fn read(&mut self) -> Result<NftState> {
        self.inner.read()
    }
    fn sets_of(&mut self, m: Member) -> Result<BTreeSet<NftSet>> {
        self.inner.sets_of(m)
    }
    fn commit(&mut self, changes: &[SetChange]) -> Result<()> {
        self.inner.commit(changes)?;
        crash_if(self.crash, CrashAfter::Nft);
        Ok(())
    }
    fn table_present(&mut self) -> Result<bool> {
        self.inner.table_present()
    }
    fn sync_record(&mut self, want: &std::collections::BTreeMap<Member, NftSet>) -> Result<()> {
        self.inner.sync_record(want)
    }
}

#[derive(Debug)]
pub struct HookTc {
    inner: TcNetlink,
    crash: Option<CrashAfter>,
}

impl Tc for HookTc {
    fn read(&mut self) -> Result<TcState> {
        self.inner.read()
    }
    fn read_one(&mut self, ifname: &str) -> Result<Shaping> {
        self.inner.read_one(ifname)
    }
    fn set(&mut self, ifname: &str, shaping: &Shaping) -> Result<()> {
        self.inner.set(ifname, shaping)?;
        crash_if(self.crash, CrashAfter::Tc);
        Ok(())
    }
    fn clear(&mut self, ifname: &str) -> Result<()> {
        self.inner.clear(ifname)?;
        crash_if(self.crash, CrashAfter::Tc);
        Ok(())
    }
    fn remove_ifb(&mut self, ifb: &str) -> Result<()> {
        self.inner.remove_ifb(ifb)
    }
}

#[derive(Debug)]
pub struct HookRoutes {
    inner: RoutesNetlink,
    crash: Option<CrashAfter>,
}

impl Routes for HookRoutes {
    fn read(&mut self) -> Result<Vec<OwnedRoute>> {
        self.inner.read()
    }
    fn add(&mut self, r: &OwnedRoute) -> Result<()> {
        self.inner.add(r)?;
        crash_if(self.crash, CrashAfter::Route);
        Ok(())
    }
    fn del(&mut self, r: &OwnedRoute) -> Result<()> {
        self.inner.del(r)
    }
}

impl Backends for Kernel {
    type N = HookNft;
    type T = HookTc;
    type R = HookRoutes;
    type U = RulesNetlink;
    type S = SysctlProc;
    fn nft(&mut self) -> &mut HookNft {
        &mut self.nft
    }
    fn tc(&mut self) -> &mut HookTc {
        &mut self.tc
    }
    fn routes(&mut self) -> &mut HookRoutes {
        &mut self.routes
    }
    fn rules(&mut self) -> &mut RulesNetlink {
        &mut self.rules
    }
    fn sysctl(&mut self) -> &mut SysctlProc {
        &mut self.sysctl
    }
}
