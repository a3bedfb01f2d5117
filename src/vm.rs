//! One lab run: a fresh output directory, qemu (TCG) booting the guest kernel with the host's root
//! over 9p, the scenario inside, and a hard deadline after which qemu is killed.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{LabError, Result};
use crate::facts::Facts;
use crate::initramfs::{self, CACHE_TAG, GUEST_CACHE_DIR, GUEST_ROOT_ARG, GUEST_ROOT_TAG, OUT_TAG, ROOT_TAG};
use crate::kernel::Kernel;
use crate::paths::{self, Artifacts};
use crate::root::{self, GuestRoot, Root};

pub const QEMU: &str = "qemu-system-x86_64";

/// Guest kernel command line. `$PPPGATE_LAB_KERNEL_ARGS` and `$PPPGATE_LAB_QEMU_ARGS` append to
/// the kernel's and qemu's arguments (for experiments; the tests do not set them).
pub const KERNEL_ARGS: &str = "console=ttyS0 quiet loglevel=4 panic=-1";

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Wall-clock limit for the whole VM run (boot included). `$PPPGATE_LAB_TIMEOUT_FACTOR`
    /// scales it for slow machines.
    pub timeout: Duration,
    pub memory_mb: u32,
    pub cpus: u32,
    /// Extra variables for the scenario (exported before it starts). Names: `[A-Z_][A-Z0-9_]*`.
    pub env: Vec<(String, String)>,
    /// The programs under test; `None`: [`Artifacts::locate`].
    pub artifacts: Option<Artifacts>,
    /// Copy the guest's log to stdout while the VM runs (demo, debugging).
    pub follow: bool,
    /// The root the guest boots (`src/root.rs`); default `$PPPGATE_LAB_ROOT`, else bookworm, so
    /// `PPPGATE_LAB_ROOT=trixie cargo test --release --test lab_foundation` runs a test on Debian 13.
    pub root: Root,
    /// The system lab: boot systemd as PID 1 with this disk as the persistent upper layer
    /// (`crate::system`). `None`: the scenario runs as the init's child on a tmpfs overlay.
    pub system: Option<crate::system::SystemDisk>,
    /// Run only these cases of the scenario (`LAB_CASES` in the guest; `run_case` records every
    /// other case as `skipped`, which [`LabRun::expect_case`] refuses). Default:
    /// `$PPPGATE_LAB_CASES` (space-separated), else every case.
    pub cases: Option<Vec<String>>,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            timeout: Duration::from_secs(300),
            memory_mb: 2048,
            cpus: 2,
            env: Vec::new(),
            artifacts: None,
            follow: false,
            root: Root::from_env(),
            system: None,
            cases: cases_from_env(),
        }
    }
}

impl LabOptions {
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn root(mut self, root: Root) -> Self {
        self.root = root;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn cases(mut self, cases: &[&str]) -> Self {
        self.cases = Some(cases.iter().map(|c| c.to_string()).collect());
        self
    }

    fn effective_timeout(&self) -> Duration {
        let factor = std::env::var("PPPGATE_LAB_TIMEOUT_FACTOR").ok().and_then(|f| f.parse::<f64>().ok());
        match factor {
            Some(f) if f.is_finite() && f > 0.0 => self.timeout.mul_f64(f),
            _ => self.timeout,
        }
    }
}

/// `$PPPGATE_LAB_CASES`: space-separated case names; unset or blank: every case.
fn cases_from_env() -> Option<Vec<String>> {
    let v = std::env::var("PPPGATE_LAB_CASES").ok()?;
    let cases: Vec<String> = v.split_whitespace().map(str::to_string).collect();
    (!cases.is_empty()).then_some(cases)
}

fn valid_case_name(c: &str) -> bool {
    !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A finished run whose scenario exited 0.
#[derive(Debug, Clone)]
pub struct LabRun {
    pub scenario: String,
    /// The root the guest booted.
    pub root: Root,
    /// `target/lab/runs/<scenario>-<timestamp>/`: lab.env, console.log, guest.log, guest.rc,
    /// results.env and whatever the scenario collected.
    pub dir: PathBuf,
    /// Wall time of the VM, boot to power-off.
    pub elapsed: Duration,
    pub facts: Facts,
}

impl LabRun {
    /// A file the scenario left in its output directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Panics (for tests) unless the scenario's case `name` recorded `name.status=ok`; the panic
    /// carries the tail of the case's log (`cases/<name>.log`).
    #[track_caller]
    pub fn expect_case(&self, name: &str) {
        let key = format!("{name}.status");
        match self.facts.get(&key) {
            Some("ok") => {}
            other => panic!(
                "lab case {name} of scenario {} did not succeed ({key}={}); run directory {}\n--- last lines of cases/{name}.log ---\n{}",
                self.scenario,
                other.unwrap_or("<not recorded>"),
                self.dir.display(),
                tail(&self.dir.join(format!("cases/{name}.log")), 40)
            ),
        }
    }

    /// Which of the scenario's cases `all` this run was asked to run: all of them, or those the
    /// case filter named (the run's own fact `lab.cases`, so a re-read run answers the same).
    /// Panics (for tests) when the filter names a case that is not in `all`: a typo must not
    /// shrink a run silently.
    #[track_caller]
    pub fn selected_cases<'a>(&self, all: &[&'a str]) -> Vec<&'a str> {
        let Some(filter) = self.facts.get("lab.cases") else {
            return all.to_vec();
        };
        let wanted: Vec<&str> = filter.split_whitespace().collect();
        for w in &wanted {
            assert!(all.contains(w), "run {}: the case filter names {w:?}, not a case of {all:?}", self.dir.display());
        }
        all.iter().copied().filter(|c| wanted.contains(c)).collect()
    }

    /// Re-reads a finished run of `scenario` in `dir` instead of booting (for working on
    /// assertions): its scenario must have exited 0, and it must have booted `root`.
    pub fn reread(scenario: &str, root: Root, dir: &Path) -> Result<LabRun> {
        let bad = |reason: String| LabError::Unsupported(format!("re-read of {}: {reason}", dir.display()));
        let rc = fs::read_to_string(dir.join("guest.rc")).map_err(|e| bad(format!("no guest.rc: {e}")))?;
        if rc.trim() != "0" {
            return Err(bad(format!("the scenario exited {}", rc.trim())));
        }
        let env = fs::read_to_string(dir.join("lab.env")).map_err(|e| bad(format!("no lab.env: {e}")))?;
        let field = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {k}=")))
                .map(|v| v.trim_matches('\'').to_string())
                .unwrap_or_default()
        };
        if field("LAB_SCENARIO_NAME") != scenario {
            return Err(bad(format!("it is a run of {:?}, not {scenario:?}", field("LAB_SCENARIO_NAME"))));
        }
        let booted = if field("LAB_ROOT").is_empty() { "bookworm".to_string() } else { field("LAB_ROOT") };
        if booted != root.name() {
            return Err(bad(format!("it booted {booted}, this test runs on {root}")));
        }
        let elapsed =
            fs::read_to_string(dir.join("elapsed")).ok().and_then(|t| t.trim().parse::<f64>().ok()).unwrap_or(0.0);
        eprintln!("lab: {scenario} ({root} root): re-reading {} (VM ran {elapsed:.1}s)", dir.display());
        Ok(LabRun {
            scenario: scenario.to_string(),
            root,
            dir: dir.to_path_buf(),
            elapsed: Duration::from_secs_f64(elapsed),
            facts: Facts::load(&dir.join("results.env"))?,
        })
    }

    /// Loads the snapshot `snap/<name>`; panics (for tests) naming the run directory.
    #[track_caller]
    pub fn snapshot(&self, name: &str) -> crate::Snapshot {
        crate::Snapshot::load(&self.dir.join("snap").join(name))
            .unwrap_or_else(|e| panic!("lab snapshot {name} of run {}: {e}", self.dir.display()))
    }

    /// Reads a text file from the output directory; panics (this is for tests) naming it.
    #[track_caller]
    pub fn read(&self, rel: &str) -> String {
        let p = self.path(rel);
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read lab output {}: {e}", p.display()))
    }
}

/// The lab: boots a VM per scenario run.
pub struct Lab;

impl Lab {
    /// Runs `tests/lab/scenarios/<scenario>.sh` in a fresh VM. Fails when the artifacts are not
    /// built, when the VM cannot boot, on timeout (qemu is killed), and when the scenario exits
    /// non-zero; every error names the run directory and carries the logs' tails.
    ///
    /// `$PPPGATE_LAB_REREAD` (space-separated run directories): a directory among them that holds
    /// a run of this scenario is re-read instead ([`LabRun::reread`]); no VM boots.
    pub fn run(scenario: &str, opts: &LabOptions) -> Result<LabRun> {
        if scenario.is_empty() || !scenario.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(LabError::BadScenarioName(scenario.to_string()));
        }
        if let Some(dir) = reread_dir(scenario) {
            return LabRun::reread(scenario, opts.root, &dir);
        }
        if let Some(bad) = opts.cases.iter().flatten().find(|c| !valid_case_name(c)) {
            return Err(LabError::Unsupported(format!("case name {bad:?} (letters, digits, '-' and '_' only)")));
        }
        let script = paths::scenario_path(scenario);
        if !script.is_file() {
            return Err(LabError::UnknownScenario { name: scenario.to_string(), path: script });
        }
        let artifacts = opts.artifacts.clone().unwrap_or_else(|| Artifacts::for_root(opts.root));
        artifacts.check()?;
        if opts.system.is_some() && !opts.root.is_host() {
            return Err(LabError::Unsupported(format!(
                "the system lab boots the build machine's root only, not {}",
                opts.root
            )));
        }
        let guest_root = root::ensure(opts.root)?;
        let kernel = guest_root.kernel()?;
        File::open(&kernel.image)
            .map_err(LabError::io("cannot read the kernel image (the lab runs as root in CI)", &kernel.image))?;
        let initrd = match &opts.system {
            None => initramfs::ensure(&kernel, &paths::lab_dir().join("initramfs"))?,
            Some(_) => initramfs::ensure_system(&kernel, &paths::lab_dir().join("initramfs"))?,
        };

        let dir = new_run_dir(scenario)?;
        write_env(&dir, scenario, &script, &artifacts, &kernel, &guest_root, opts)?;

        // One VM at a time: two TCG guests on a 2-core machine only make both miss deadlines.
        let _lock = lock_lab()?;
        let timeout = opts.effective_timeout();
        let console = File::create(dir.join("console.log")).map_err(LabError::io("cannot create console.log", &dir))?;
        let console_err = console.try_clone().map_err(LabError::io("cannot create console.log", &dir))?;

        // If this process dies (a test run killed by hand or by a CI limit), the kernel sends
        // `timeout` SIGTERM (setpriv --pdeathsig, kept across its exec), which passes it on to
        // qemu: an orphaned VM would otherwise run on, and load the machine, until its timeout.
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "TERM", "--", "timeout"]);
        // Backstop: coreutils' timeout ends qemu a little after the run's own limit.
        cmd.arg("--kill-after=5").arg(format!("{}", timeout.as_secs() + 15)).arg(QEMU);
        cmd.args(["-accel", "tcg", "-nographic", "-no-reboot", "-nic", "none"]);
        cmd.arg("-m").arg(opts.memory_mb.to_string()).arg("-smp").arg(opts.cpus.to_string());
        cmd.arg("-kernel").arg(&kernel.image).arg("-initrd").arg(&initrd);
        let mut append = String::from(KERNEL_ARGS);
        if opts.system.is_some() {
            append.push(' ');
            append.push_str(crate::system::KERNEL_ARGS);
        }
        if !guest_root.root.is_host() {
            append.push(' ');
            append.push_str(GUEST_ROOT_ARG);
        }
        if let Ok(extra) = std::env::var("PPPGATE_LAB_KERNEL_ARGS") {
            append.push(' ');
            append.push_str(&extra);
        }
        cmd.arg("-append").arg(append);
        cmd.arg("-fsdev").arg(format!("local,id={ROOT_TAG},path=/,security_model=none,readonly=on,multidevs=remap"));
        cmd.arg("-device").arg(format!("virtio-9p-pci,fsdev={ROOT_TAG},mount_tag={ROOT_TAG}"));
        if !guest_root.root.is_host() {
            cmd.arg("-fsdev").arg(format!(
                "local,id={GUEST_ROOT_TAG},path={},security_model=none,readonly=on,multidevs=remap",
                qemu_escape(&guest_root.dir)
            ));
            cmd.arg("-device").arg(format!("virtio-9p-pci,fsdev={GUEST_ROOT_TAG},mount_tag={GUEST_ROOT_TAG}"));
        }
        cmd.arg("-fsdev").arg(format!("local,id={OUT_TAG},path={},security_model=none", qemu_escape(&dir)));
        cmd.arg("-device").arg(format!("virtio-9p-pci,fsdev={OUT_TAG},mount_tag={OUT_TAG}"));
        let cache = paths::lab_dir().join("cache");
        fs::create_dir_all(&cache).map_err(LabError::io("cannot create the lab cache directory", &cache))?;
        cmd.arg("-fsdev").arg(format!("local,id={CACHE_TAG},path={},security_model=none", qemu_escape(&cache)));
        cmd.arg("-device").arg(format!("virtio-9p-pci,fsdev={CACHE_TAG},mount_tag={CACHE_TAG}"));
        if let Some(disk) = &opts.system {
            // No emulated display: udev would load drm drivers for it, minutes under TCG.
            cmd.args(["-vga", "none"]);
            cmd.arg("-drive").arg(format!("file={},format=raw,if=virtio,cache=writeback", qemu_escape(&disk.path)));
        }
        if let Ok(extra) = std::env::var("PPPGATE_LAB_QEMU_ARGS") {
            cmd.args(extra.split_whitespace());
        }
        cmd.stdin(Stdio::null()).stdout(console).stderr(console_err);

        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|source| LabError::Spawn { program: "setpriv/timeout/qemu-system-x86_64".into(), source })?;
        let mut follower = Follower { path: dir.join("guest.log"), offset: 0, on: opts.follow };
        let status = loop {
            follower.pump();
            match child.try_wait() {
                Ok(Some(st)) => {
                    follower.pump();
                    break st;
                }
                Ok(None) => {}
                Err(source) => return Err(LabError::Spawn { program: QEMU.into(), source }),
            }
            if started.elapsed() >= timeout {
                stop(&mut child);
                let _ = fs::write(dir.join("TIMEOUT"), format!("killed after {}s\n", timeout.as_secs()));
                return Err(LabError::Timeout {
                    scenario: scenario.to_string(),
                    after: timeout,
                    tails: tails(&dir),
                    dir,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let elapsed = started.elapsed();
        let _ = fs::write(dir.join("elapsed"), format!("{:.3}\n", elapsed.as_secs_f64()));
        eprintln!(
            "lab: {scenario} ({} root): VM ran {:.1}s; output in {}",
            guest_root.root,
            elapsed.as_secs_f64(),
            dir.display()
        );

        let rc = match fs::read_to_string(dir.join("guest.rc")) {
            Ok(s) => s.trim().parse::<i32>().ok(),
            Err(_) => None,
        };
        let Some(rc) = rc else {
            return Err(LabError::GuestDidNotFinish {
                scenario: scenario.to_string(),
                status: status.to_string(),
                tails: tails(&dir),
                dir,
            });
        };
        if rc != 0 {
            return Err(LabError::GuestFailed { scenario: scenario.to_string(), rc, tails: tails(&dir), dir });
        }
        let facts = Facts::load(&dir.join("results.env"))?;
        Ok(LabRun { scenario: scenario.to_string(), root: guest_root.root, dir, elapsed, facts })
    }
}

/// The run directory `$PPPGATE_LAB_REREAD` names for `scenario` (`<scenario>-<stamp>[-n]`).
fn reread_dir(scenario: &str) -> Option<PathBuf> {
    let list = std::env::var("PPPGATE_LAB_REREAD").ok()?;
    list.split_whitespace().map(PathBuf::from).find(|d| {
        d.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(scenario))
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|stamp| stamp.bytes().next().is_some_and(|b| b.is_ascii_digit()))
    })
}

/// Ends the VM: SIGTERM to coreutils' `timeout`, which passes it on to qemu (SIGKILL to
/// `timeout` alone would orphan qemu); SIGKILL if that does not end it within 10 s.
fn stop(child: &mut std::process::Child) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Copies what the guest appends to a file to stdout.
struct Follower {
    path: PathBuf,
    offset: u64,
    on: bool,
}

impl Follower {
    fn pump(&mut self) {
        use std::io::{Read, Seek, SeekFrom, Write};
        if !self.on {
            return;
        }
        let Ok(mut f) = File::open(&self.path) else { return };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if let Ok(n) = f.read_to_end(&mut buf) {
            self.offset += n as u64;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&buf);
            let _ = out.flush();
        }
    }
}

/// qemu's option syntax doubles a comma inside a value.
fn qemu_escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// One lab VM per machine, whichever checkout or target directory started it: two TCG guests on
/// a 2-core machine both miss their deadlines.
const LAB_LOCK: &str = "/run/lock/pppgate-lab-vm.lock";

fn lock_lab() -> Result<Flock<File>> {
    let path = PathBuf::from(LAB_LOCK);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(LabError::io("cannot open the lab lock", &path))?;
    let f = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => return Ok(l),
        Err((f, _)) => f,
    };
    eprintln!("lab: waiting for another lab VM to finish ({})", path.display());
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| LabError::Io {
        what: "cannot take the lab lock",
        path,
        source: e.into(),
    })
}

fn new_run_dir(scenario: &str) -> Result<PathBuf> {
    let runs = paths::runs_dir();
    fs::create_dir_all(&runs).map_err(LabError::io("cannot create the lab runs directory", &runs))?;
    let stamp = utc_stamp(SystemTime::now());
    for n in 0..1000 {
        let name = if n == 0 { format!("{scenario}-{stamp}") } else { format!("{scenario}-{stamp}-{n}") };
        let dir = runs.join(name);
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(LabError::Io { what: "cannot create the run directory", path: dir, source: e }),
        }
    }
    Err(LabError::Io {
        what: "cannot create a unique run directory",
        path: runs,
        source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    })
}

/// `YYYYmmddTHHMMSSZ` in UTC.
pub fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn valid_env_name(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_uppercase() || c == b'_')
        && b.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
}

/// The host directories a guest booting a foreign root needs at the same paths: the checkout
/// (scenarios, guest library, packaging) and the artifacts' directories, outermost only.
fn host_binds(repo: &Path, a: &Artifacts) -> Result<Vec<PathBuf>> {
    let mut dirs = vec![repo.to_path_buf()];
    for p in [&a.plugin, &a.pppgate] {
        let p = paths::guest_path(p)?;
        dirs.push(p.parent().unwrap_or(Path::new("/")).to_path_buf());
    }
    dirs.sort();
    let mut out: Vec<PathBuf> = Vec::new();
    for d in dirs {
        if !out.iter().any(|o| d.starts_with(o)) {
            out.push(d);
        }
    }
    for d in &out {
        let s = d.display().to_string();
        if d == Path::new("/") || s.contains(char::is_whitespace) || s.contains(['\'', '"', '$', '`']) {
            return Err(LabError::Malformed {
                path: d.clone(),
                line: 0,
                reason: "a path the guest needs from the host must be a plain path below /".into(),
            });
        }
    }
    Ok(out)
}

fn write_env(
    dir: &Path,
    scenario: &str,
    script: &Path,
    a: &Artifacts,
    k: &Kernel,
    guest_root: &GuestRoot,
    opts: &LabOptions,
) -> Result<()> {
    let repo = paths::guest_path(&paths::repo_root())?;
    let mut vars: Vec<(String, String)> = vec![
        ("LAB_SCENARIO_NAME".into(), scenario.into()),
        ("LAB_SCENARIO".into(), paths::guest_path(script)?.display().to_string()),
        ("LAB_REPO".into(), repo.display().to_string()),
        ("LAB_BOOT".into(), paths::guest_path(&paths::guest_dir().join("boot.sh"))?.display().to_string()),
        ("LAB_LIB".into(), paths::guest_path(&paths::guest_dir().join("lib.sh"))?.display().to_string()),
        ("LAB_PLUGIN".into(), paths::guest_path(&a.plugin)?.display().to_string()),
        ("LAB_PPPGATE".into(), paths::guest_path(&a.pppgate)?.display().to_string()),
        ("LAB_KERNEL".into(), k.version.clone()),
        ("LAB_OUT".into(), "/out".into()),
        ("LAB_CACHE".into(), GUEST_CACHE_DIR.into()),
        ("LAB_HOST_RUN_DIR".into(), dir.display().to_string()),
        ("LAB_PPPD_VERSION".into(), guest_root.pppd_version().unwrap_or_default()),
        ("LAB_ROOT".into(), guest_root.root.name().into()),
    ];
    if !guest_root.root.is_host() {
        let binds = host_binds(&repo, a)?;
        let list: Vec<String> = binds.iter().map(|p| p.display().to_string()).collect();
        vars.push(("LAB_HOST_BINDS".into(), list.join(" ")));
    }
    for (key, v) in &opts.env {
        if !valid_env_name(key) {
            return Err(LabError::Malformed {
                path: dir.join("lab.env"),
                line: 0,
                reason: format!("environment name {key:?} is not [A-Z_][A-Z0-9_]*"),
            });
        }
        vars.push((key.clone(), v.clone()));
    }
    if let Some(cases) = &opts.cases {
        vars.push(("LAB_CASES".into(), cases.join(" ")));
    }
    let mut text = String::from("# written by the pppgate lab harness; sourced by the guest's init and boot.sh\n");
    for (key, v) in vars {
        let _ = writeln!(text, "export {key}={}", shell_quote(&v));
    }
    let p = dir.join("lab.env");
    fs::write(&p, text).map_err(LabError::io("cannot write lab.env", &p))
}

/// The last `lines` lines of a file (a note saying why when it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({} unreadable: {e})", path.display()),
    }
}

fn tails(dir: &Path) -> String {
    format!(
        "--- last lines of guest.log ---\n{}\n--- last lines of console.log ---\n{}",
        tail(&dir.join("guest.log"), 40),
        tail(&dir.join("console.log"), 15)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(utc_stamp(UNIX_EPOCH + Duration::from_secs(951_782_400)), "20000229T000000Z");
        assert_eq!(utc_stamp(UNIX_EPOCH + Duration::from_secs(1_795_000_000)), "20261118T110640Z");
    }

    #[test]
    fn env_values_are_quoted_for_sh() {
        assert_eq!(shell_quote("a'b c"), r"'a'\''b c'");
        assert!(valid_env_name("LAB_X1") && !valid_env_name("lab") && !valid_env_name("1A"));
    }

    #[test]
    fn host_binds_are_the_outermost_directories() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("repo");
        std::fs::create_dir_all(repo.join("target/release")).unwrap();
        std::fs::create_dir_all(d.path().join("elsewhere")).unwrap();
        for f in ["target/release/pppgate", "target/release/libpppgate.so"] {
            std::fs::write(repo.join(f), "").unwrap();
        }
        std::fs::write(d.path().join("elsewhere/libpppgate.so"), "").unwrap();
        let repo = repo.canonicalize().unwrap();
        let a = Artifacts {
            plugin: repo.join("target/release/libpppgate.so"),
            pppgate: repo.join("target/release/pppgate"),
        };
        assert_eq!(host_binds(&repo, &a).unwrap(), vec![repo.clone()]);
        let b = Artifacts { plugin: d.path().join("elsewhere/libpppgate.so"), pppgate: a.pppgate.clone() };
        let binds = host_binds(&repo, &b).unwrap();
        assert_eq!(binds.len(), 2);
        assert!(binds.contains(&d.path().canonicalize().unwrap().join("elsewhere")));
    }

    #[test]
    fn qemu_values_escape_commas() {
        assert_eq!(qemu_escape(Path::new("/a,b")), "/a,,b");
    }
}
