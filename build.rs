//! Records the installed pppd's version and plugin directory for the lab harness
//! (`pppgate_lab::PPPD_VERSION`, `PPPD_PLUGIN_DIR`), passed into the guest as LAB_PPPD_VERSION.
//! Nothing here is required: without pppd the constants are None and the lab says so at run time.

use std::path::Path;
use std::process::Command;

fn header_version(include: &Path) -> Option<String> {
    for (file, define) in [("pppd/pppdconf.h", "PPPD_VERSION"), ("pppd/patchlevel.h", "VERSION")] {
        let text = std::fs::read_to_string(include.join(file)).ok()?;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() == Some("#define") && words.next() == Some(define) {
                let v = words.next()?.trim_matches('"').to_string();
                if !v.is_empty() {
                    return Some(v);
                }
            }
        }
    }
    None
}

fn binary_version() -> Option<String> {
    let out = Command::new("pppd").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.split_whitespace().skip_while(|w| *w != "version").nth(1).map(|s| s.to_string())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PPPD_INCLUDE_DIR");
    let include = std::env::var("PPPD_INCLUDE_DIR").unwrap_or_else(|_| "/usr/include".into());
    println!("cargo:rerun-if-changed={include}/pppd/patchlevel.h");
    println!("cargo:rerun-if-changed={include}/pppd/pppdconf.h");
    let version = header_version(Path::new(&include)).or_else(binary_version);
    if let Some(v) = version {
        println!("cargo:rustc-env=PPPGATE_LAB_PPPD_VERSION={v}");
        for dir in [format!("/usr/lib/pppd/{v}"), format!("/usr/lib/x86_64-linux-gnu/pppd/{v}")] {
            if Path::new(&dir).is_dir() {
                println!("cargo:rustc-env=PPPGATE_LAB_PPPD_PLUGIN_DIR={dir}");
                break;
            }
        }
    }
}
