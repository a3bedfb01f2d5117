//! Generates the pppd bindings from the *installed* headers and tells the crate which plugin API
//! they describe.
//!
//! * `PPPD_INCLUDE_DIR` (default `/usr/include`) is the directory that holds `pppd/pppd.h`.
//! * When `pppd/pppdconf.h` exists the headers are the 2.5 API (`ppp_add_notify`, `ppp_ifname()`, ...)
//!   and the crate is built with `--cfg pppd_2_5`; otherwise they are the 2.4.x API (global variables,
//!   `add_notifier`).
//! * The version string pppd compares against the plugin's `pppd_version` symbol is read from the same
//!   headers (`PPPD_VERSION` in pppdconf.h, `VERSION` in patchlevel.h), so the plugin always matches
//!   the pppd whose headers it was compiled against.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rustc-check-cfg=cfg(pppd_2_5)");
    println!("cargo:rerun-if-env-changed=PPPD_INCLUDE_DIR");
    let include = PathBuf::from(env::var("PPPD_INCLUDE_DIR").unwrap_or_else(|_| "/usr/include".into()));
    let pppd_dir = include.join("pppd");
    let pppd_h = pppd_dir.join("pppd.h");
    if !pppd_h.exists() {
        panic!("pppd headers not found at {} (install Debian's ppp-dev or set PPPD_INCLUDE_DIR)", pppd_h.display());
    }
    for h in ["pppd.h", "pppdconf.h", "patchlevel.h", "ipcp.h", "lcp.h", "fsm.h", "options.h"] {
        println!("cargo:rerun-if-changed={}", pppd_dir.join(h).display());
    }

    let conf = pppd_dir.join("pppdconf.h");
    let is_25 = conf.exists();
    let version =
        if is_25 { read_define(&conf, "PPPD_VERSION") } else { read_define(&pppd_dir.join("patchlevel.h"), "VERSION") }
            .unwrap_or_else(|| panic!("cannot read the pppd version from the headers in {}", pppd_dir.display()));
    if is_25 {
        println!("cargo:rustc-cfg=pppd_2_5");
    }
    println!("cargo:rustc-env=PPPGATE_PPPD_VERSION={version}");
    // Exposed to dependents (links = "pppd") as DEP_PPPD_VERSION / DEP_PPPD_API.
    println!("cargo:version={version}");
    println!("cargo:api={}", if is_25 { "2.5" } else { "2.4" });

    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let mut bytes: Vec<String> = version.bytes().map(|b| b.to_string()).collect();
    bytes.push("0".into());
    fs::write(
        out.join("version.rs"),
        format!(
            "/// The pppd version these bindings were generated for, NUL-terminated.\n\
             pub const PPPD_VERSION_CSTR: [u8; {}] = [{}];\n",
            bytes.len(),
            bytes.join(", ")
        ),
    )
    .unwrap();

    let wrapper = if is_25 {
        "#include <stdint.h>\n#include <stdbool.h>\n#include <stdarg.h>\n#include <stddef.h>\n\
         #include <pppd/pppd.h>\n#include <pppd/options.h>\n#include <pppd/fsm.h>\n\
         #include <pppd/lcp.h>\n#include <pppd/ipcp.h>\n"
    } else {
        "#include <stdint.h>\n#include <stdarg.h>\n#include <stdio.h>\n#include <sys/types.h>\n\
         #include <sys/time.h>\n#include <net/if.h>\n\
         #include <pppd/pppd.h>\n#include <pppd/fsm.h>\n#include <pppd/lcp.h>\n#include <pppd/ipcp.h>\n"
    };
    let mut b = bindgen::Builder::default()
        .header_contents("pppgate_wrapper.h", wrapper)
        .clang_arg(format!("-I{}", include.display()))
        .clang_arg(format!("-I{}", pppd_dir.display()))
        .derive_default(true)
        .layout_tests(false)
        .allowlist_type("option_t")
        .allowlist_type("opt_type")
        .allowlist_type("ipcp_options")
        .allowlist_type("pppd_stats")
        .allowlist_var("ipcp_hisoptions")
        .allowlist_var("ipcp_gotoptions")
        .allowlist_var("allowed_address_hook")
        .allowlist_var("OPT_.*")
        .allowlist_var("PHASE_.*")
        .allowlist_function("lcp_close")
        .allowlist_function("info")
        .allowlist_function("notice")
        .allowlist_function("warn")
        .allowlist_function("error")
        .allowlist_function("dbglog");
    if is_25 {
        b = b
            .allowlist_type("ppp_notify_t")
            .allowlist_type("ppp_exit_code_t")
            .allowlist_type("ppp_phase_t")
            .allowlist_function("ppp_add_notify")
            .allowlist_function("ppp_del_notify")
            .allowlist_function("ppp_add_options")
            .allowlist_function("ppp_ifname")
            .allowlist_function("ppp_peer_authname")
            .allowlist_function("ppp_ipparam")
            .allowlist_function("ppp_set_status")
            .allowlist_function("ppp_status")
            .allowlist_function("ppp_timeout")
            .allowlist_function("ppp_untimeout")
            .allowlist_function("ppp_get_link_stats")
            .rustified_enum("ppp_notify_t");
    } else {
        b = b
            .allowlist_var("ifname")
            .allowlist_var("peer_authname")
            .allowlist_var("ipparam")
            .allowlist_var("status")
            .allowlist_var("link_stats")
            .allowlist_var("link_stats_valid")
            .allowlist_var("ip_up_notifier")
            .allowlist_var("ip_down_notifier")
            .allowlist_var("exitnotify")
            .allowlist_var("phasechange")
            .allowlist_var("auth_up_notifier")
            .allowlist_var("EXIT_.*")
            .allowlist_function("add_notifier")
            .allowlist_function("remove_notifier")
            .allowlist_function("add_options")
            .allowlist_function("timeout")
            .allowlist_function("untimeout");
    }
    let bindings = b.generate().expect("bindgen failed on the pppd headers");
    bindings.write_to_file(out.join("bindings.rs")).unwrap();
}

fn read_define(path: &Path, name: &str) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if it.next() == Some("#define") && it.next() == Some(name) {
            let rest: String = it.collect::<Vec<_>>().join(" ");
            let v = rest.trim().trim_matches('"');
            if !v.is_empty() {
                return Some(v.to_string());
            }
        }
    }
    None
}
