//! `pppgate wg …`: WireGuard provisioning for tenants' routers, the verbs a panel calls (seeds
//! 001/002's REST endpoints). SQL is the truth; `wg reconcile` (and its timer) brings the
//! server interface to it. Private keys are decrypted only by `wg router config` (and the
//! server's own by reconcile); nothing else prints or logs a key but public ones.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use ipnet::Ipv4Net;
use policy_core::config::{parse_ipv4_net, Config};
use policy_core::db::wg::{self as dbwg, Added, NewRouter, RouterRow, SealedRef};
use policy_core::lock::Lock;
use policy_core::wg::keys::{generate_private, generate_psk, public_of, Key, KeyPair};
use policy_core::wg::reconcile::{self, Report};
use policy_core::wg::render::{self, RouterView};
use policy_core::wg::seal::{Binding, MasterKey, MasterKeys};
use policy_core::wg::{self, WgConfig};
use policy_core::{db, Error, ExitCode};
use serde_json::json;

use crate::policy_cmd::parse_id;
use crate::verb::{load_config, CmdResult, Failure, Global};

#[derive(Subcommand, Debug)]
pub enum WgCmd {
    /// Creates the master key file and this concentrator's server interface keys when absent.
    Init,
    /// Tenants and their /16 subnets.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Routers: address, keys, configuration downloads.
    #[command(subcommand)]
    Router(RouterCmd),
    /// Subnet usage.
    #[command(subcommand)]
    Subnet(SubnetCmd),
    /// Handshakes and traffic per router, read from the interface and recorded in SQL.
    Status(StatusArgs),
    /// Brings the server interface to what SQL says (peers, addresses, routes), then records
    /// handshakes and traffic.
    Reconcile,
    /// Re-encrypts every stored key under a new master key, in one transaction.
    RotateKey,
}

#[derive(Subcommand, Debug)]
pub enum TenantCmd {
    /// Allocates the tenant's subnet (idempotent).
    Add {
        #[arg(allow_hyphen_values = true)]
        tenant: String,
        #[arg(long)]
        name: Option<String>,
    },
    Show {
        #[arg(allow_hyphen_values = true)]
        tenant: String,
    },
    List,
    /// Deletes a tenant without routers.
    Del {
        #[arg(allow_hyphen_values = true)]
        tenant: String,
    },
}

#[derive(Args, Debug)]
pub struct RouterAddArgs {
    #[arg(long, allow_hyphen_values = true)]
    tenant: String,
    #[arg(long, allow_hyphen_values = true)]
    router: String,
    /// Display name (shown in the script's header).
    #[arg(long)]
    name: Option<String>,
    /// WireGuard interface name on the router.
    #[arg(long)]
    interface_name: Option<String>,
    /// Persistent keepalive the router sends, seconds (0 = off).
    #[arg(long, allow_hyphen_values = true)]
    keepalive: Option<String>,
    /// A network behind or through the router: the concentrator routes it into the tunnel
    /// (AllowedIPs on the server; `0.0.0.0/0` only for policy routing). Repeatable.
    #[arg(long = "route", value_name = "CIDR")]
    routes: Vec<String>,
    /// A network behind the concentrator the router sends into the tunnel, besides its tenant
    /// subnet (e.g. a client subnet whose traffic the router NATs). Repeatable.
    #[arg(long = "allow", value_name = "CIDR")]
    allow: Vec<String>,
    /// DNS servers for the wg-quick config. Repeatable.
    #[arg(long = "dns", value_name = "IP")]
    dns: Vec<String>,
    /// Reconcile the server interface right away (else the timer does within its period).
    #[arg(long)]
    apply: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ConfigFormat {
    Routeros,
    WgQuick,
}

#[derive(Subcommand, Debug)]
pub enum RouterCmd {
    /// Allocates address and keys (the tenant's subnet on first use); idempotent.
    Add(RouterAddArgs),
    Show {
        #[arg(allow_hyphen_values = true)]
        router: String,
    },
    List {
        #[arg(long, allow_hyphen_values = true)]
        tenant: Option<String>,
    },
    /// Deletes the router; its address is quarantined before reuse.
    Del {
        #[arg(allow_hyphen_values = true)]
        router: String,
        #[arg(long)]
        apply: bool,
    },
    /// Prints the router's configuration (contains its private key).
    Config {
        #[arg(allow_hyphen_values = true)]
        router: String,
        #[arg(long, value_enum)]
        format: ConfigFormat,
    },
}

#[derive(Subcommand, Debug)]
pub enum SubnetCmd {
    Info {
        #[arg(long, allow_hyphen_values = true)]
        tenant: String,
    },
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Only this tenant's routers.
    #[arg(long, allow_hyphen_values = true)]
    tenant: Option<String>,
}

struct Ctx {
    cfg: Config,
    wg: WgConfig,
}

fn ctx(g: &Global) -> Result<Ctx, Failure> {
    let cfg = load_config(g)?;
    let wg = cfg.wireguard.clone().ok_or_else(|| Failure {
        code: ExitCode::Config,
        message: format!("{}: no [wireguard] section; WireGuard provisioning is not configured", cfg.source.display()),
    })?;
    Ok(Ctx { cfg, wg })
}

fn keys(c: &Ctx) -> Result<MasterKeys, Failure> {
    MasterKeys::load(&c.wg.master_key_file).map_err(Failure::from)
}

fn connect(c: &Ctx) -> Result<postgres::Client, Failure> {
    let mut client = db::connect(&c.cfg.database)?;
    db::migrate::require_current(&mut client)?;
    Ok(client)
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

fn nets(what: &'static str, v: &[String]) -> Result<Vec<Ipv4Net>, Failure> {
    let mut out = Vec::new();
    for s in v {
        let n = parse_ipv4_net(s).map_err(|e| Failure::from(Error::invalid(what, s.clone(), e)))?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

pub fn wg(g: &Global, cmd: &WgCmd) -> CmdResult {
    match cmd {
        WgCmd::Init => init(g),
        WgCmd::Tenant(t) => tenant(g, t),
        WgCmd::Router(r) => router(g, r),
        WgCmd::Subnet(SubnetCmd::Info { tenant }) => {
            let t = parse_id("tenant", tenant)?;
            let c = ctx(g)?;
            let mut client = connect(&c)?;
            let info = dbwg::subnet_info(&mut client, t, c.wg.address_quarantine.as_secs())?;
            if g.json {
                print_json(&info);
            } else {
                println!(
                    "tenant {}: subnet {} gateway {} routers {}-{}: {} allocated, {} quarantined, {} available of {}",
                    info.tenant_id,
                    info.subnet,
                    info.gateway,
                    info.range_start,
                    info.range_end,
                    info.allocated,
                    info.quarantined,
                    info.available,
                    info.capacity
                );
            }
            Ok(())
        }
        WgCmd::Status(a) => status(g, a),
        WgCmd::Reconcile => {
            let c = ctx(g)?;
            let (rep, recorded) = reconcile_now(&c, Duration::ZERO)?;
            if g.json {
                print_json(&json!({ "reconcile": rep, "stats_recorded": recorded }));
            } else {
                print_report(&rep);
            }
            Ok(())
        }
        WgCmd::RotateKey => rotate_key(g),
    }
}

fn init(g: &Global) -> CmdResult {
    let c = ctx(g)?;
    let path = &c.wg.master_key_file;
    let created_key = match std::fs::symlink_metadata(path) {
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path.parent().unwrap_or(Path::new("/"));
            if !dir.is_dir() {
                return Err(Error::invalid(
                    "master key file",
                    path.display().to_string(),
                    "its directory does not exist",
                )
                .into());
            }
            MasterKeys::from_keys(path, vec![MasterKey::generate()?]).write(true)?;
            true
        }
        Err(source) => return Err(Error::Read { path: path.clone(), source }.into()),
    };
    let keys = keys(&c)?;
    let mut client = connect(&c)?;
    let nas = &c.cfg.nas.identity;
    let endpoint = format!("{}:{}", c.wg.endpoint_host, c.wg.endpoint_port);
    let (row, created_server) = match dbwg::server(&mut client, nas, &c.wg.interface)? {
        Some(r) => (r, false),
        None => {
            let kp = KeyPair::generate()?;
            let sealed = keys.seal(&kp.private, &Binding::ServerPrivate { nas, ifname: &c.wg.interface })?;
            dbwg::ensure_server(
                &mut client,
                nas,
                &c.wg.interface,
                &kp.public.to_base64(),
                &sealed,
                c.wg.listen_port,
                &endpoint,
            )?
        }
    };
    let updated = !created_server && dbwg::update_server_endpoint(&mut client, row.id, c.wg.listen_port, &endpoint)?;
    if g.json {
        print_json(&json!({
            "master_key_file": path, "master_key_created": created_key, "master_key_id": keys.active().id,
            "server": row, "server_created": created_server, "server_updated": updated,
        }));
    } else {
        if created_key {
            println!(
                "created master key {} (id {}); back it up, it is never stored in the database",
                path.display(),
                keys.active().id
            );
        } else {
            println!("master key {} present (active id {})", path.display(), keys.active().id);
        }
        println!(
            "server interface {} on {nas}: public key {} port {} endpoint {}{}",
            row.ifname,
            row.public_key,
            c.wg.listen_port,
            endpoint,
            if created_server {
                " (created)"
            } else if updated {
                " (updated)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn tenant(g: &Global, cmd: &TenantCmd) -> CmdResult {
    match cmd {
        TenantCmd::Add { tenant, name } => {
            let t = parse_id("tenant", tenant)?;
            if let Some(n) = name {
                wg::check_router_name(n).map_err(|_| {
                    Error::invalid(
                        "tenant name",
                        n.clone(),
                        "1-64 characters: letters, digits, space and . _ - : / ( ) # @ + ,",
                    )
                })?;
            }
            let c = ctx(g)?;
            let mut client = connect(&c)?;
            let (row, created) = dbwg::ensure_tenant(&mut client, t, name.as_deref())?;
            if g.json {
                print_json(&json!({ "tenant": row, "created": created }));
            } else {
                println!(
                    "tenant {}: subnet {} gateway {}{}",
                    row.tenant_id,
                    row.subnet,
                    row.gateway,
                    if created { " (allocated)" } else { "" }
                );
            }
            Ok(())
        }
        TenantCmd::Show { tenant } => {
            let t = parse_id("tenant", tenant)?;
            let c = ctx(g)?;
            let mut client = connect(&c)?;
            let row =
                dbwg::tenant(&mut client, t)?.ok_or_else(|| Error::NotFound { what: "tenant", id: t.to_string() })?;
            if g.json {
                print_json(&row);
            } else {
                println!(
                    "tenant {}{}: subnet {} gateway {}, {} router(s), since {}",
                    row.tenant_id,
                    row.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default(),
                    row.subnet,
                    row.gateway,
                    row.routers,
                    row.created_at
                );
            }
            Ok(())
        }
        TenantCmd::List => {
            let c = ctx(g)?;
            let mut client = connect(&c)?;
            let rows = dbwg::tenants(&mut client)?;
            if g.json {
                print_json(&rows);
            } else {
                for r in rows {
                    println!("{}\t{}\t{} router(s)\t{}", r.tenant_id, r.subnet, r.routers, r.name.unwrap_or_default());
                }
            }
            Ok(())
        }
        TenantCmd::Del { tenant } => {
            let t = parse_id("tenant", tenant)?;
            let c = ctx(g)?;
            let mut client = connect(&c)?;
            let row = dbwg::delete_tenant(&mut client, t)?;
            if g.json {
                print_json(&json!({ "deleted": row }));
            } else {
                println!("tenant {} deleted; subnet {} is free", row.tenant_id, row.subnet);
            }
            Ok(())
        }
    }
}

fn router_line(r: &RouterRow) -> String {
    format!(
        "router {} tenant {} {} {} {}{}",
        r.router_id,
        r.tenant_id,
        r.address,
        r.status,
        r.public_key,
        r.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default()
    )
}

fn router(g: &Global, cmd: &RouterCmd) -> CmdResult {
    match cmd {
        RouterCmd::Add(a) => router_add(g, a),
        RouterCmd::Show { router } => {
            let r = parse_id("router", router)?;
            let c = ctx(g)?;
            let mut client = connect(&c)?;
            let row =
                dbwg::router(&mut client, r)?.ok_or_else(|| Error::NotFound { what: "router", id: r.to_string() })?;
            if g.json {
                print_json(&row);
            } else {
                println!("{}", router_line(&row));
                println!(
                    "  server {} · allowed on router {} · routed {} · keepalive {}s · handshake {} · rx {} tx {}",
                    row.server_ifname,
                    join(&row.allowed_on_router()),
                    join(&row.routed_networks),
                    row.keepalive,
                    row.last_handshake.as_deref().unwrap_or("never"),
                    row.rx_bytes,
                    row.tx_bytes
                );
            }
            Ok(())
        }
        RouterCmd::List { tenant } => {
            let t = tenant.as_deref().map(|t| parse_id("tenant", t)).transpose()?;
            let c = ctx(g)?;
            let mut client = connect(&c)?;
            let rows = dbwg::routers(&mut client, t)?;
            if g.json {
                print_json(&rows);
            } else {
                for r in &rows {
                    println!("{}", router_line(r));
                }
            }
            Ok(())
        }
        RouterCmd::Del { router, apply } => {
            let r = parse_id("router", router)?;
            let c = ctx(g)?;
            let mut client = connect(&c)?;
            let row = dbwg::delete_router(&mut client, r)?;
            drop(client);
            let rep = if *apply { Some(reconcile_now(&c, Duration::from_secs(5))?.0) } else { None };
            if g.json {
                print_json(&json!({ "deleted": row, "reconcile": rep }));
            } else {
                println!("router {} deleted; address {} quarantined", row.router_id, row.address);
            }
            Ok(())
        }
        RouterCmd::Config { router, format } => {
            let r = parse_id("router", router)?;
            let c = ctx(g)?;
            let keys = keys(&c)?;
            let mut client = connect(&c)?;
            let row =
                dbwg::router(&mut client, r)?.ok_or_else(|| Error::NotFound { what: "router", id: r.to_string() })?;
            let server = dbwg::servers(&mut client)?
                .into_iter()
                .find(|s| s.id == row.server_id)
                .ok_or_else(|| Error::NotFound { what: "wireguard server", id: row.server_id.to_string() })?;
            let private =
                keys.open(&row.private_key, &Binding::RouterPrivate { tenant: row.tenant_id, router: row.router_id })?;
            let psk = keys.open(&row.psk, &Binding::RouterPsk { tenant: row.tenant_id, router: row.router_id })?;
            let server_pub = Key::from_base64("server public key", &server.public_key)?;
            let (host, port) = wg::parse_endpoint(&server.endpoint)
                .map_err(|e| Error::invalid("server endpoint", server.endpoint.clone(), e))?;
            // The management networks go into the tunnel too: the panel reaches routers through
            // the concentrator (docs/wireguard.md, tenant isolation), and the answers must follow.
            let mut allowed = row.allowed_on_router();
            for n in &c.wg.management_nets {
                if !allowed.contains(n) {
                    allowed.push(*n);
                }
            }
            let view = RouterView {
                tenant: row.tenant_id,
                router: row.router_id,
                name: row.name.as_deref(),
                interface: &row.interface_name,
                address: row.address,
                subnet: row.subnet,
                listen_port: row.listen_port,
                private_key: &private,
                preshared_key: &psk,
                server_public_key: &server_pub,
                endpoint_host: &host,
                endpoint_port: port,
                allowed: &allowed,
                keepalive: row.keepalive,
                dns: &row.dns,
                mtu: c.wg.mtu,
            };
            let (fmt, text) = match format {
                ConfigFormat::Routeros => ("routeros", render::routeros(&view)),
                ConfigFormat::WgQuick => ("wg-quick", render::wg_quick(&view)),
            };
            tracing::info!(
                router = row.router_id,
                tenant = row.tenant_id,
                format = fmt,
                "router configuration downloaded"
            );
            if g.json {
                print_json(&json!({ "router_id": row.router_id, "format": fmt, "config": text }));
            } else {
                print!("{text}");
            }
            Ok(())
        }
    }
}

fn join(v: &[Ipv4Net]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")
}

fn router_add(g: &Global, a: &RouterAddArgs) -> CmdResult {
    // Input first: nothing is read or written before every argument is valid.
    let tenant = parse_id("tenant", &a.tenant)?;
    let router = parse_id("router", &a.router)?;
    if let Some(n) = &a.name {
        wg::check_router_name(n)?;
    }
    if let Some(i) = &a.interface_name {
        wg::check_router_ifname(i).map_err(|e| Error::invalid("router interface name", i.clone(), e))?;
    }
    let keepalive = match &a.keepalive {
        None => None,
        Some(k) => {
            let v: i64 = k.parse().map_err(|_| Error::invalid("keepalive", k.clone(), "not a number of seconds"))?;
            Some(wg::check_keepalive(v).map_err(|e| Error::invalid("keepalive", k.clone(), e))?)
        }
    };
    let routes = nets("route", &a.routes)?;
    // Tenant subnets are routed by their routers' /32s only: a routed network inside the pool
    // would hand another tenant's (unassigned) addresses to this router. 0.0.0.0/0 is for policy
    // routing and loses to every /32 in WireGuard's longest-prefix match.
    if let Some(n) = routes.iter().find(|n| n.prefix_len() > 0 && policy_core::kernel::wg::isolation::overlaps_pool(n))
    {
        return Err(Error::invalid("route", n.to_string(), "overlaps the tenant pool 10.100.0.0-10.254.255.255").into());
    }
    let allow = nets("allowed network", &a.allow)?;
    let mut dns = Vec::new();
    for d in &a.dns {
        dns.push(d.parse::<Ipv4Addr>().map_err(|_| Error::invalid("dns", d.clone(), "not an IPv4 address"))?);
    }
    let c = ctx(g)?;
    let keys = keys(&c)?;
    let mut client = connect(&c)?;
    let server = reconcile::server_row(&mut client, &c.wg, &c.cfg.nas.identity)?;
    let private = generate_private()?;
    let psk = generate_psk()?;
    let new = NewRouter {
        router_id: router,
        tenant_id: tenant,
        tenant_name: None,
        server_id: server.id,
        name: a.name.clone(),
        public_key: public_of(&private).to_base64(),
        private_key: keys.seal(&private, &Binding::RouterPrivate { tenant, router })?,
        psk: keys.seal(&psk, &Binding::RouterPsk { tenant, router })?,
        interface_name: a.interface_name.clone().unwrap_or_else(|| c.wg.router_interface.clone()),
        listen_port: c.wg.router_listen_port,
        keepalive: keepalive.unwrap_or(c.wg.keepalive),
        routed_networks: routes,
        extra_allowed: allow,
        dns: if dns.is_empty() { c.wg.dns.clone() } else { dns },
        quarantine_s: c.wg.address_quarantine.as_secs(),
    };
    let added = dbwg::add_router(&mut client, &new)?;
    drop(client);
    let (row, created) = match added {
        Added::Created(r) => (r, true),
        Added::Existing(r) => (r, false),
    };
    let rep = if a.apply { Some(reconcile_now(&c, Duration::from_secs(5))?.0) } else { None };
    if created {
        tracing::info!(router = row.router_id, tenant = row.tenant_id, address = %row.address, "router provisioned");
    }
    if g.json {
        print_json(&json!({ "router": row, "created": created, "reconcile": rep }));
    } else {
        println!("{}{}", router_line(&row), if created { " (created)" } else { " (exists)" });
    }
    Ok(())
}

/// Takes the WireGuard lock (waiting at most `wait`), reconciles the interface of this NAS and
/// records the figures it read in SQL.
fn reconcile_now(c: &Ctx, wait: Duration) -> Result<(Report, u64), Failure> {
    let lock = if wait.is_zero() {
        Lock::try_acquire(&c.wg.lock_file, "wg reconcile")
    } else {
        Lock::acquire_within(&c.wg.lock_file, "wg reconcile", wait)
    };
    let lock = match lock {
        Ok(l) => l,
        Err(Error::Locked { path, .. }) => {
            return Err(Failure { code: ExitCode::Locked, message: format!("lock {} is busy", path.display()) })
        }
        Err(e) => return Err(e.into()),
    };
    let keys = keys(c)?;
    let mut client = connect(c)?;
    let server = reconcile::server_row(&mut client, &c.wg, &c.cfg.nas.identity)?;
    let routers = dbwg::routers_of_server(&mut client, server.id)?;
    let want = reconcile::desired(&server, &routers, &keys, &c.wg)?;
    let mut dev = reconcile::open_backend(c.wg.backend, &want.ifname)?;
    let (rep, after) = reconcile::apply(dev.as_mut(), &want)?;
    drop(lock);
    let n = dbwg::record_stats(&mut client, server.id, &reconcile::stats_of(&after), c.wg.handshake_up.as_secs())?;
    dbwg::prune_quarantine(&mut client, c.wg.address_quarantine.as_secs())?;
    Ok((rep, n))
}

fn print_report(r: &Report) {
    println!(
        "{} ({}): {} peer(s); set {} removed {}; addresses +{} -{}; routes +{} -{}{}{}",
        r.interface,
        r.backend,
        r.peers,
        r.peers_set,
        r.peers_removed,
        r.addresses_added.len(),
        r.addresses_removed.len(),
        r.routes_added.len(),
        r.routes_removed.len(),
        if r.created_interface { "; interface created" } else { "" },
        if r.key_or_port_set { "; key/port set" } else { "" }
    );
}

fn status(g: &Global, a: &StatusArgs) -> CmdResult {
    let tenant = a.tenant.as_deref().map(|t| parse_id("tenant", t)).transpose()?;
    let c = ctx(g)?;
    let mut client = connect(&c)?;
    let server = reconcile::server_row(&mut client, &c.wg, &c.cfg.nas.identity)?;
    let t0 = Instant::now();
    let mut dev = reconcile::open_backend(c.wg.backend, &server.ifname)?;
    let state = dev.read(&server.ifname)?;
    let read_us = t0.elapsed().as_micros() as u64;
    let recorded = match &state {
        Some(d) => dbwg::record_stats(&mut client, server.id, &reconcile::stats_of(d), c.wg.handshake_up.as_secs())?,
        None => 0,
    };
    let now = db::db_now(&mut client)?;
    let rows: Vec<RouterRow> =
        dbwg::routers(&mut client, tenant)?.into_iter().filter(|r| r.server_id == server.id).collect();
    let on_device: std::collections::BTreeSet<String> =
        state.iter().flat_map(|d| d.peers.iter().map(|p| p.public_key.to_base64())).collect();
    let routers: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            json!({
                "router_id": r.router_id, "tenant_id": r.tenant_id, "name": r.name, "address": r.address,
                "public_key": r.public_key, "status": r.status, "on_interface": on_device.contains(&r.public_key),
                "last_handshake": r.last_handshake, "handshake_age_s": r.handshake_age_s,
                "endpoint": r.endpoint, "rx_bytes": r.rx_bytes, "tx_bytes": r.tx_bytes,
            })
        })
        .collect();
    let up = rows.iter().filter(|r| r.status == "up").count();
    if g.json {
        print_json(&json!({
            "interface": server.ifname, "backend": dev.kind(), "interface_present": state.is_some(),
            "handshake_up_s": c.wg.handshake_up.as_secs(), "now": now, "recorded": recorded, "read_us": read_us,
            "routers_up": up, "routers": routers,
        }));
    } else {
        println!(
            "{} ({}): {} of {} router(s) up (handshake within {} s){}",
            server.ifname,
            dev.kind(),
            up,
            rows.len(),
            c.wg.handshake_up.as_secs(),
            if state.is_none() { "; interface missing (run pppgate wg reconcile)" } else { "" }
        );
        for r in &rows {
            println!(
                "  {} tenant {} {} {} handshake {} endpoint {} rx {} tx {}",
                r.router_id,
                r.tenant_id,
                r.address,
                r.status,
                r.handshake_age_s.map(|s| format!("{s}s ago")).unwrap_or_else(|| "never".into()),
                r.endpoint.as_deref().unwrap_or("-"),
                r.rx_bytes,
                r.tx_bytes
            );
        }
    }
    Ok(())
}

fn rotate_key(g: &Global) -> CmdResult {
    let c = ctx(g)?;
    let mut keys = keys(&c)?;
    let mut client = connect(&c)?;
    let old: Vec<i32> = keys.ids();
    // 1. The new key goes into the file first: a crash after this leaves a file that opens both.
    keys.push(MasterKey::generate()?);
    keys.write(false)?;
    // 2. Every row, one transaction.
    let n = dbwg::reseal_all(&mut client, |s| match s {
        SealedRef::Server { nas, ifname, private_key, .. } => {
            Ok((keys.reseal(private_key, &Binding::ServerPrivate { nas, ifname })?, None))
        }
        SealedRef::Router { router_id, tenant_id, private_key, psk } => Ok((
            keys.reseal(private_key, &Binding::RouterPrivate { tenant: *tenant_id, router: *router_id })?,
            Some(keys.reseal(psk, &Binding::RouterPsk { tenant: *tenant_id, router: *router_id })?),
        )),
    })?;
    // 3. Only then the old keys leave the file.
    let new_id = keys.active().id;
    keys.retire_old();
    keys.write(false)?;
    tracing::info!(old = ?old, new = new_id, rows = n, "wireguard master key rotated");
    if g.json {
        print_json(&json!({ "old_key_ids": old, "key_id": new_id, "rows_resealed": n }));
    } else {
        println!("master key rotated: id {new_id} now seals all {n} row(s); old id(s) {old:?} removed from the file");
    }
    Ok(())
}
