//! Network namespaces and the real tools.
//!
//! A kernel test calls [`private_netns`] first: its thread moves into a new, empty network
//! namespace, and every socket it opens and every program it starts afterwards (the `pppgate`
//! binary included) lives there. Topologies with more hosts use named namespaces ([`NetNs`]),
//! whose names are unique per process and test so tests run in parallel.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Moves the calling test thread into a new, empty network namespace with `lo` up. Every socket
/// the test opens afterwards, and every tool it runs, lives in that namespace.
pub fn private_netns() {
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        panic!(
            "kernel test needs root to create a network namespace (unshare(CLONE_NEWNET) failed: {e}); \
             run `cargo test` as root — these tests must not be skipped"
        );
    }
    run(&["ip", "link", "set", "lo", "up"]);
}

/// Runs a program and returns its stdout; panics with its stderr when it fails.
pub fn run(args: &[&str]) -> String {
    let out = output(args);
    if !out.status.success() {
        panic!(
            "{:?} failed ({}): {}{}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a program and returns what it did, whatever its exit status.
pub fn output(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e} (is the tool installed?)", args))
}

/// Runs a program whose stdout is JSON (empty output reads as `[]`).
pub fn json(args: &[&str]) -> Value {
    let out = run(args);
    if out.trim().is_empty() {
        return Value::Array(vec![]);
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{:?} printed no JSON ({e}): {out}", args))
}

/// Feeds `script` to `ip -batch -` (one process for many link/address changes).
pub fn ip_batch(script: &str) {
    ip_batch_in(&[], script)
}

fn ip_batch_in(prefix: &[&str], script: &str) {
    use std::io::Write;
    let mut argv: Vec<&str> = prefix.to_vec();
    argv.extend_from_slice(&["ip", "-batch", "-"]);
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run ip -batch: {e}"));
    child.stdin.take().expect("piped").write_all(script.as_bytes()).expect("write ip batch");
    let out = child.wait_with_output().expect("ip -batch");
    assert!(out.status.success(), "ip -batch failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Polls `f` every 20 ms until it is true; false when `timeout` passed first.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A named network namespace (`ip netns add`), deleted on drop together with every process
/// still running in it. Names are unique per process and test, so tests run in parallel.
pub struct NetNs {
    pub name: String,
}

static NS_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl NetNs {
    /// `tag` is a short label that shows up in the name (`ip netns list`), e.g. "cl", "in".
    pub fn new(tag: &str) -> NetNs {
        let name = format!("pgt{}-{}-{tag}", std::process::id(), NS_COUNTER.fetch_add(1, Ordering::SeqCst));
        let out = output(&["ip", "netns", "add", &name]);
        if !out.status.success() {
            panic!(
                "kernel test needs root to create network namespace {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let ns = NetNs { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Moves the calling test thread into this namespace (like [`private_netns`], but into a
    /// named one other processes can join with `ip netns exec`, e.g. TUN stand-ins for pppd).
    pub fn enter(&self) {
        let path = format!("/var/run/netns/{}", self.name);
        let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns into {} failed (root needed): {e}", self.name));
    }

    /// Turns IPv6 off in the namespace (no autoconfiguration traffic moving interface counters).
    pub fn disable_ipv6(&self) {
        self.run(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]);
    }

    /// The command line that runs `args` inside the namespace.
    pub fn argv<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["ip", "netns", "exec", self.name.as_str()];
        v.extend_from_slice(args);
        v
    }

    pub fn run(&self, args: &[&str]) -> String {
        run(&self.argv(args))
    }

    pub fn output(&self, args: &[&str]) -> Output {
        output(&self.argv(args))
    }

    pub fn json(&self, args: &[&str]) -> Value {
        json(&self.argv(args))
    }

    pub fn ip_batch(&self, script: &str) {
        ip_batch_in(&["ip", "netns", "exec", &self.name], script)
    }

    /// A command that runs `args` inside the namespace (for callers that need pipes).
    pub fn command(&self, args: &[&str]) -> Command {
        let argv = self.argv(args);
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]);
        c
    }

    /// Starts a background process in the namespace; it is killed when the guard drops.
    pub fn spawn(&self, args: &[&str]) -> Bg {
        let child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", args));
        Bg(child)
    }

    /// Loads an nft ruleset text into the namespace (`nft -f`).
    pub fn nft_load(&self, ruleset: &str) {
        use std::io::Write;
        let mut child =
            self.command(&["nft", "-f", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("nft -f -");
        child.stdin.take().expect("piped").write_all(ruleset.as_bytes()).expect("write ruleset");
        let out = child.wait_with_output().expect("nft");
        assert!(out.status.success(), "nft -f in {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
    }

    /// Waits until a TCP listener on `port` is up in the namespace.
    pub fn wait_listening(&self, port: u16) {
        let needle = format!(":{port} ");
        let ok = wait_until(Duration::from_secs(5), || self.run(&["ss", "-Hltn"]).contains(&needle));
        assert!(ok, "nothing listens on port {port} in {}", self.name);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Ok(o) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                if let Ok(p) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A background process, killed on drop.
pub struct Bg(pub Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Holds the flock(2) lock on `path` from another process (`flock --no-fork PATH sleep`): the
/// process spawned is the one holding the lock, so killing it (drop) releases the lock and leaves
/// no orphan behind (a forking `flock` left its `sleep` holding the test's stdout). Returns once
/// the lock is seen held.
pub fn hold_lock(path: &std::path::Path) -> Bg {
    std::fs::create_dir_all(path.parent().expect("lock path has a parent")).expect("create the lock's directory");
    let child = Command::new("flock")
        .arg("--no-fork")
        .arg(path)
        .args(["sleep", "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("flock(1)");
    let held = wait_until(Duration::from_secs(5), || {
        !Command::new("flock")
            .arg("-n")
            .arg(path)
            .arg("true")
            .stdin(Stdio::null())
            .status()
            .expect("flock -n")
            .success()
    });
    assert!(held, "the child holds the lock on {}", path.display());
    Bg(child)
}

/// Turns off segmentation offload on a device so packets are wire-sized, as on a real PPP link
/// (the shaper would otherwise meter 64 KiB TSO super-packets). `prefix` runs it elsewhere, e.g.
/// `["ip", "netns", "exec", ns]`.
pub fn no_gso(prefix: &[&str], dev: &str) {
    let mut v: Vec<&str> = prefix.to_vec();
    v.extend_from_slice(&["ip", "link", "set", dev, "gso_max_segs", "1", "gso_max_size", "1514"]);
    run(&v);
}

/// A veth pair: `local` stays in the current namespace, `peer` goes to `ns` (or stays here).
/// Both ends are brought up; addresses are the caller's business.
pub fn veth(local: &str, peer: &str, ns: Option<&NetNs>) {
    match ns {
        Some(ns) => run(&["ip", "link", "add", local, "type", "veth", "peer", "name", peer, "netns", &ns.name]),
        None => run(&["ip", "link", "add", local, "type", "veth", "peer", "name", peer]),
    };
    run(&["ip", "link", "set", local, "up"]);
    match ns {
        Some(ns) => ns.run(&["ip", "link", "set", peer, "up"]),
        None => run(&["ip", "link", "set", peer, "up"]),
    };
}
