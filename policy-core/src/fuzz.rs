//! The bodies of pppgate's fuzz targets: one function per target, each feeding its input to the
//! real parsers of one kind of outside input and asserting what must hold for every input.
//!
//! `fuzz/fuzz_targets/<name>.rs` (cargo-fuzz, nightly) calls exactly one of these, and
//! `policy-core/tests/fuzz_corpus.rs` (stable, `cargo test`) replays every file of
//! `fuzz/corpus/<name>/` through the same function, so the fuzzer and CI's regression test cannot
//! drift apart. A panic is a finding: the parser crashed, or a property below does not hold.
//! docs/fuzzing.md describes the targets and the long runs (`scripts/fuzz.sh`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use crate::accounting::codec;
use crate::accounting::counters::{advance, Octets, Previous};
use crate::accounting::record::{Batch, Entry, SessionInfo, Stop};
use crate::accounting::spool::{self, BATCH_MAGIC, MARKER_MAGIC, MARKER_VERSION};
use crate::accounting::state::{State, STATE_MAGIC, STATE_VERSION};
use crate::accounting::SessionKey;
use crate::config::{self, Config, GardenEntry};
use crate::db::{connections, settings};
use crate::error::ExitCode;
use crate::mapping::Mapping;
use crate::policy::model::{QuotaPeriod, Status};
use crate::radius::{self, env, sqlname};
use crate::{hardcut, ids, input, wg};

/// A target's body: takes the fuzzer's input, panics on a finding.
pub type Body = fn(&[u8]);

/// Every target: (name, body). The names are the files under `fuzz/fuzz_targets/` and the
/// directories under `fuzz/corpus/`.
pub const TARGETS: &[(&str, Body)] = &[
    ("mapping", mapping),
    ("radius_env", radius_env),
    ("checkrad_args", checkrad_args),
    ("config", config),
    ("cli_ids", cli_ids),
    ("sql_facts", sql_facts),
    ("accounting_spool", accounting_spool),
    ("accounting_state", accounting_state),
];

/// Text arguments arrive as UTF-8 or not at all (clap's `String` arguments, PostgreSQL text).
fn utf8(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// `/run/vpn-sessions/<if>.env`: [`Mapping::parse_bytes`], the parser [`Mapping::read`] uses.
/// A mapping that parses renders to text that parses back to the same mapping, and holds only
/// values the parser's rules allow.
pub fn mapping(data: &[u8]) {
    let Ok(m) = Mapping::parse_bytes(data) else { return };
    assert!(m.connection_id > 0);
    assert!(m.start_ts > 0);
    assert!(m.pppd_pid > 1 && m.pppd_pid <= 4_194_304);
    assert!(crate::mapping::valid_ifname(&m.ppp_if));
    assert!(!m.client_ip.is_unspecified() && !m.client_ip.is_broadcast());
    let again = Mapping::parse(&m.render()).expect("a rendered mapping parses");
    assert_eq!(again, m, "render/parse round trip");
}

/// FreeRADIUS rlm_exec's environment: one value through [`env::decode_value`], the whole input
/// as a NUL-separated environment through [`env::RadiusEnv::from_pairs`] (the hook's
/// `from_process`), and the hook's `--max` through [`radius::parse_max`].
pub fn radius_env(data: &[u8]) {
    match env::decode_value(data) {
        Ok(v) => {
            if data.first() == Some(&b'"') {
                // Decoding only shrinks, and FreeRADIUS's own encoding of the value decodes back.
                assert!(v.len() < data.len());
                assert_eq!(env::decode_value(&env::encode_value(&v)).as_ref(), Ok(&v));
            } else {
                assert_eq!(v, data, "a bare value is taken literally");
            }
        }
        Err(_) => assert_eq!(data.first(), Some(&b'"'), "only a quoted value can be malformed"),
    }
    let pairs = data.split(|b| *b == 0).filter_map(|entry| {
        let eq = entry.iter().position(|b| *b == b'=')?;
        Some((OsString::from_vec(entry[..eq].to_vec()), OsString::from_vec(entry[eq + 1..].to_vec())))
    });
    let e = env::RadiusEnv::from_pairs(pairs);
    if let Some(Ok(user)) = e.get("User-Name") {
        // What the hook does with the User-Name next: its radacct spelling (FreeRADIUS's quoting
        // and rlm_sql's escaping), which checkrad reverses.
        let stored = sqlname::stored_user_name(user);
        if !user.contains(&0) {
            assert_eq!(sqlname::user_name_from_stored(&stored).as_deref(), Some(&user[..]));
        }
    }
    if let Some(s) = utf8(data) {
        match radius::parse_max(s) {
            Ok(None) => assert!(s.trim().is_empty()),
            Ok(Some(n)) => assert_eq!(s.trim().parse::<u32>().ok(), Some(n)),
            Err(e) => assert_eq!(e.exit_code(), ExitCode::DataErr),
        }
    }
}

/// checkrad's arguments: the stored user name through [`sqlname::user_name_from_stored`] (the
/// binary takes it lossily as text) and the NAS address through [`radius::parse_nas_ip`].
pub fn checkrad_args(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Some(user_name) = sqlname::user_name_from_stored(&s) {
        // Only what FreeRADIUS + rlm_sql write is accepted, and it is unambiguous.
        assert_eq!(sqlname::stored_user_name(&user_name), s);
    }
    match radius::parse_nas_ip(&s) {
        Ok(ip) => assert_eq!(radius::parse_nas_ip(&ip.to_string()).ok(), Some(ip)),
        Err(e) => assert_eq!(e.exit_code(), ExitCode::DataErr),
    }
}

/// pppgate.toml and its secrets file: [`Config::from_toml_with`] (the whole validation) over the
/// text before the first NUL, with the secrets file's text after it parsed by
/// [`config::parse_secrets`]. Both are parsed on their own too.
pub fn config(data: &[u8]) {
    let (cfg_bytes, secrets_bytes) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Some(text) = utf8(cfg_bytes) else { return };
    let secrets_text = secrets_bytes.and_then(utf8);
    if let Some(t) = secrets_text {
        let _ = config::parse_secrets(Path::new("/etc/pppgate/secrets.toml"), t);
    }
    let secrets = |p: &Path| match secrets_text {
        Some(t) => config::parse_secrets(p, t),
        None => Err(format!("database.secrets_file: cannot read {}", p.display())),
    };
    match Config::from_toml_with(Path::new("/etc/pppgate/pppgate.toml"), text, &secrets) {
        Ok(c) => {
            // What validation promises the rest of pppgate.
            assert!(!c.nas.identity.is_empty() && c.nas.identity.len() <= 64);
            assert!(!c.nas.identity.contains(':'), "session keys split on ':'");
            for g in &c.policy.walled_garden {
                let again: GardenEntry = g.to_string().parse().expect("a walled-garden entry prints parseably");
                assert_eq!(&again, g);
            }
        }
        Err(e) => assert_eq!(e.exit_code(), ExitCode::Config),
    }
}

/// Ids and values given on the command line (and by the panel through sudo): every verb's id
/// parser, and the value rules of `policy_core::input`, `rt_tables` and `wg` the CLI parses with. An id is
/// accepted in exactly one spelling and every verb agrees; every refusal is exit 65.
pub fn cli_ids(data: &[u8]) {
    let Some(s) = utf8(data) else { return };
    let id = ids::parse_id("id", s);
    match &id {
        Ok(v) => {
            assert!(*v > 0);
            assert_eq!(v.to_string(), s, "one spelling per id");
        }
        Err(e) => assert_eq!(e.exit_code(), ExitCode::DataErr),
    }
    assert_eq!(hardcut::parse_connection_id(s).ok(), id.as_ref().ok().copied(), "session kill agrees");
    assert_eq!(input::parse_id("id", s).ok(), id.ok(), "apply agrees");

    let refused = |r: &crate::Result<()>| r.as_ref().err().map(|e| e.exit_code());
    if let Ok(Some(v)) = input::parse_rate(s, 10_000_000) {
        assert!(input::rate_ok(v, 10_000_000));
    }
    if let Ok(v) = input::parse_u32("n", s, 1_000_000) {
        assert!(v <= 1_000_000);
    }
    if let Ok(a) = input::parse_ipv4("address", s) {
        assert!(!a.is_unspecified() && !a.is_broadcast() && !a.is_multicast());
    }
    if let Ok(n) = input::parse_net(s) {
        assert_eq!(n.trunc(), n);
        assert_eq!(input::parse_net(&n.to_string()).ok(), Some(n));
    }
    if let Ok(n) = input::parse_route_dst(s) {
        assert!(n.prefix_len() > 0);
    }
    if let Ok(st) = input::parse_status(s) {
        assert_eq!(input::parse_status(st.as_sql()).ok(), Some(st));
    }
    if let Ok(p) = input::parse_priority(s) {
        assert!((1..=input::MAX_RULE_PRIORITY).contains(&p));
    }
    if let Ok(Some(q)) = input::parse_quota(s) {
        assert!(q >= 0);
    }
    let _ = input::parse_expiry(s);
    for r in [input::check_login(s), input::check_rule_name(s), input::check_ifname(s), wg::check_router_name(s)] {
        assert!(matches!(refused(&r), None | Some(ExitCode::DataErr)));
    }
    if let Ok((host, port)) = wg::parse_endpoint(s) {
        assert_ne!(port, 0);
        assert_eq!(wg::parse_endpoint(&format!("{host}:{port}")), Ok((host, port)));
    }
    // A routing table as a number (a name is looked up in a file that does not exist here).
    if let Ok(t) = crate::rt_tables::resolve(Path::new("/nonexistent/rt_tables"), s) {
        assert!(t > 0 && t < u32::MAX);
        assert_eq!(t.to_string(), s.trim(), "one spelling per table id");
    }
    let _ = wg::check_ifname(s);
    let _ = wg::check_router_ifname(s);
}

/// What SQL hands the policy engine as text: the routes and policy-routing JSON of a facts row
/// ([`connections::routes_from_json`], [`connections::pbr_from_json`]), status and quota period
/// names, and the apply-window setting ([`settings::parse_apply_window`]). A number out of range
/// is refused, never wrapped into another table, metric or priority.
pub fn sql_facts(data: &[u8]) {
    let Some(s) = utf8(data) else { return };
    let json: Option<Vec<serde_json::Value>> = serde_json::from_str(s).ok();
    // serde reads a struct from an object or from an array in field order.
    let number = |v: &serde_json::Value, k: &str, at: usize| match v {
        serde_json::Value::Array(a) => a.get(at).and_then(serde_json::Value::as_i64),
        _ => v.get(k).and_then(serde_json::Value::as_i64),
    };
    // serde skips a field it does not know without range-checking its number (`"x":4e294967550`),
    // which serde_json::Value refuses: the cross-check needs both.
    if let (Ok(routes), Some(json)) = (connections::routes_from_json(s), json.as_ref()) {
        assert_eq!(routes.len(), json.len());
        for (r, j) in routes.iter().zip(json) {
            assert_eq!(r.table.map(i64::from), number(j, "table", 2));
            assert_eq!(r.metric.map(i64::from), number(j, "metric", 3));
            assert_eq!(r.dst.trunc(), r.dst);
        }
    }
    if let (Ok(rules), Some(json)) = (connections::pbr_from_json(s), json.as_ref()) {
        assert_eq!(rules.len(), json.len());
        for (p, j) in rules.iter().zip(json) {
            assert_eq!(Some(i64::from(p.table)), number(j, "table", 1));
            assert_eq!(Some(i64::from(p.priority)), number(j, "priority", 4));
        }
    }
    if let Ok(st) = s.parse::<Status>() {
        assert_eq!(st.as_sql(), s);
    }
    let _ = s.parse::<QuotaPeriod>();
    if let Some(w) = settings::parse_apply_window(s) {
        assert!(!w.is_zero() && w <= config::APPLY_WINDOW_CAP);
    }
}

/// The octets SQL counts for `batches` from nothing: per session the largest total any entry
/// carries (db::accounting: usage is the growth of a session's absolute total, GREATEST over
/// everything committed), summed over sessions.
pub fn counted_octets<'a>(batches: impl IntoIterator<Item = &'a Batch>) -> Octets {
    let mut per: BTreeMap<&str, Octets> = BTreeMap::new();
    for b in batches {
        for e in &b.entries {
            let o = per.entry(e.session.key.as_str()).or_default();
            o.rx = o.rx.max(e.total.rx);
            o.tx = o.tx.max(e.total.tx);
        }
    }
    per.values().fold(Octets::default(), |a, o| a.saturating_add(*o))
}

fn sample_session(unit: u32) -> SessionInfo {
    let key = SessionKey::new("lns-1", &format!("ppp{unit}"), 4000 + unit, 1_700_000_000);
    SessionInfo {
        key: key.into_string(),
        connection_id: i64::from(unit) + 1,
        ppp_if: format!("ppp{unit}"),
        client_ip: Ipv4Addr::new(100, 64, 0, 10 + unit as u8),
        pppd_pid: 4000 + unit,
        start_ts: 1_700_000_000,
        up_ts: Some(1_700_000_002),
        base: (unit % 2 == 1).then_some(Octets::new(180, 90)),
    }
}

/// The intact journal the `accounting_spool` target corrupts: three records of three sessions,
/// the last closing one, as a collector writes them (also the corpus seeds' source).
pub fn sample_spool() -> Vec<Batch> {
    (1..=3u64)
        .map(|seq| {
            let entries = (0..3u32)
                .map(|unit| {
                    let total = Octets::new(seq * 1_000_000 * u64::from(unit + 1), seq * 300_000);
                    let prev = Octets::new((seq - 1) * 1_000_000 * u64::from(unit + 1), (seq - 1) * 300_000);
                    Entry {
                        session: sample_session(unit),
                        at: 1_700_000_000 + 300 * seq as i64,
                        ifindex: Some(10 + unit),
                        baseline: total,
                        delta: Octets::new(total.rx - prev.rx, total.tx - prev.tx),
                        total,
                        stop: (seq == 3 && unit == 2).then(|| Stop { at: 1_700_000_900, cause: "User-Request".into() }),
                    }
                })
                .collect();
            Batch {
                seq,
                batch_id: format!("lns-1:0011223344556677:{seq}"),
                nas_identity: "lns-1".into(),
                collected_at: 1_700_000_000 + 300 * seq as i64,
                entries,
            }
        })
        .collect()
}

/// A fresh state without a random instance (State::fresh reads /dev/urandom; the fuzzer runs
/// this a million times).
fn fresh_state() -> State {
    State {
        instance: "fuzz".into(),
        created_at: 0,
        next_seq: 1,
        applied_seq: 0,
        sessions: BTreeMap::new(),
        closed: BTreeMap::new(),
    }
}

/// [`sample_spool`], encoded once, with the octets it counts and the state it rolls forward to.
struct Intact {
    batches: Vec<Batch>,
    files: Vec<Vec<u8>>,
    counted: Octets,
    state: State,
}

fn intact_spool() -> &'static Intact {
    static INTACT: std::sync::OnceLock<Intact> = std::sync::OnceLock::new();
    INTACT.get_or_init(|| {
        let batches = sample_spool();
        let files = batches.iter().map(spool::encode_record).collect();
        let counted = counted_octets(&batches);
        let mut state = fresh_state();
        for b in &batches {
            state.apply(b);
        }
        Intact { batches, files, counted, state }
    })
}

/// A decoded journal record keeps its meaning through a rewrite, and folding it into the state
/// twice changes nothing the second time (a record replayed again is not counted again).
fn check_batch(b: &Batch) {
    let again = spool::decode_record(b.seq, &spool::encode_record(b)).expect("an encoded record decodes");
    assert_eq!(&again, b, "encode/decode round trip");
    let mut s = fresh_state();
    let first = s.apply(b);
    assert_eq!(first, b.seq > 0);
    let snapshot = s.clone();
    assert!(!s.apply(b), "a record is folded in once");
    assert_eq!(s, snapshot);
    let _ = s.expire_closed(b.collected_at);
    for e in &b.entries {
        let _ = SessionKey::parse(&e.session.key);
    }
}

/// Journal (spool) records, `spool/<seq>.batch`:
/// 1. the input as a record file, through [`spool::decode_record`] (what the collector's scan
///    and replay use);
/// 2. the input as a record's JSON body in a correct frame (so the fuzzer gets past the CRC),
///    format 2 and format 1;
/// 3. the input as damage to an intact journal ([`sample_spool`]): each 4 bytes flip a byte,
///    cut a file, or rename a file to another sequence number. Every record that still decodes
///    is exactly its original, and the records that decode never count more octets than the
///    intact journal ([`counted_octets`]), so a corrupt spool never counts twice.
pub fn accounting_spool(data: &[u8]) {
    for seq in [1, 2, 3] {
        if let Ok(b) = spool::decode_record(seq, data) {
            check_batch(&b);
        }
    }
    for version in [1, spool::BATCH_VERSION] {
        let framed = codec::encode(BATCH_MAGIC, version, data);
        if let Ok(b) = spool::decode_json::<Batch>(BATCH_MAGIC, spool::BATCH_VERSION, &framed) {
            check_batch(&b);
            assert!(matches!(spool::decode_record(b.seq, &framed), Ok(ref d) if d == &b));
        }
    }

    let Intact { batches: intact, files: encoded, counted: whole, state: full } = intact_spool();
    let mut files: Vec<(u64, Vec<u8>)> = intact.iter().map(|b| b.seq).zip(encoded.iter().cloned()).collect();
    for op in data.chunks_exact(4) {
        let f = &mut files[usize::from(op[0]) % 3];
        let pos = usize::from(u16::from_be_bytes([op[1], op[2]]));
        match op[3] {
            0 => f.1.truncate(pos % (f.1.len() + 1)),
            1 => f.0 = u64::from(op[1] % 5),
            x => {
                let len = f.1.len();
                if len > 0 {
                    f.1[pos % len] ^= x;
                }
            }
        }
    }
    let mut decoded: Vec<Batch> = Vec::new();
    for (seq, bytes) in &files {
        if let Ok(b) = spool::decode_record(*seq, bytes) {
            let original = intact.iter().find(|o| o.seq == b.seq).expect("only intact records decode");
            assert_eq!(&b, original, "a damaged record never decodes as different data");
            decoded.push(b);
        }
    }
    decoded.sort_by_key(|b| b.seq);
    decoded.dedup();
    let counted = counted_octets(&decoded);
    assert!(counted.rx <= whole.rx && counted.tx <= whole.tx, "a corrupt spool counted more than the intact one");
    // Rolling the state forward over what survived (Journal::open) never exceeds the intact totals.
    let mut s = fresh_state();
    for b in &decoded {
        s.apply(b);
    }
    for (k, st) in &s.sessions {
        let whole = full.sessions.get(k).map(|f| f.total).unwrap_or_else(|| {
            intact
                .iter()
                .flat_map(|b| &b.entries)
                .filter(|e| &e.session.key == k)
                .map(|e| e.total)
                .fold(Octets::default(), |a, t| Octets::new(a.rx.max(t.rx), a.tx.max(t.tx)))
        });
        assert!(st.total.rx <= whole.rx && st.total.tx <= whole.tx);
    }
}

/// The accounting state file and ip-down's final markers, raw and in a correct frame: a state
/// that decodes re-encodes to itself; a marker that decodes turns into a closing reading
/// ([`crate::accounting::record::FinalMarker::best_reading`] and [`advance`]) without a panic
/// and without negative usage, against no baseline and against each baseline the state holds.
pub fn accounting_state(data: &[u8]) {
    let mut states = Vec::new();
    for bytes in [data.to_vec(), codec::encode(STATE_MAGIC, STATE_VERSION, data)] {
        if let Ok(s) = State::decode(&bytes) {
            assert_eq!(State::decode(&s.encode()).as_ref(), Ok(&s), "state round trip");
            let mut t = s.clone();
            let _ = t.expire_closed(i64::MAX);
            let mut t = s.clone();
            let _ = t.expire_closed(i64::MIN);
            t.reserve_past(u64::MAX);
            for k in s.sessions.keys().chain(s.closed.keys()) {
                let _ = SessionKey::parse(k);
            }
            states.push(s);
        }
    }
    let mut previous: Vec<Option<Previous>> = vec![None];
    previous.extend(states.iter().flat_map(|s| s.sessions.values().map(|v| Some(v.previous()))));
    previous.truncate(64);
    for bytes in
        [data.to_vec(), codec::encode(MARKER_MAGIC, MARKER_VERSION, data), codec::encode(MARKER_MAGIC, 1, data)]
    {
        let Ok(m) = spool::decode_marker(&bytes) else { continue };
        assert_eq!(spool::decode_marker(&spool::encode_marker(&m)).as_ref(), Ok(&m), "marker round trip");
        let _ = spool::marker_file_name(m.session.pppd_pid, m.session.start_ts, &m.session.ppp_if);
        for prev in previous.iter().copied().chain([m.session.first_previous(m.kernel.map(|k| k.ifindex))]) {
            let (reading, ifindex, wraps_32) = m.best_reading(prev);
            let a = advance(prev, reading, ifindex, wraps_32);
            assert!(a.delta.rx <= a.baseline.rx && a.delta.tx <= a.baseline.tx, "delta beyond the reading");
        }
    }
}
