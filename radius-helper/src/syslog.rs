//! Log lines to the local syslog socket (/dev/log) when stderr goes nowhere: FreeRADIUS runs
//! checkrad and rlm_exec programs with stderr on /dev/null unless it is debugging, and the
//! one-line-per-outage messages must still reach the journal.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Whether fd 2 is /dev/null.
pub fn stderr_is_dev_null() -> bool {
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else { return false };
    let Ok(null) = nix::sys::stat::stat("/dev/null") else { return false };
    st.st_rdev == null.st_rdev && (st.st_mode & libc_s_ifmt()) == libc_s_ifchr()
}

fn libc_s_ifmt() -> u32 {
    nix::sys::stat::SFlag::S_IFMT.bits()
}

fn libc_s_ifchr() -> u32 {
    nix::sys::stat::SFlag::S_IFCHR.bits()
}

/// `MakeWriter` for tracing-subscriber: one datagram per event, facility daemon.
pub struct Syslog;

pub struct Line {
    severity: u8,
    buf: Vec<u8>,
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { severity: 6, buf: Vec::new() }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        let severity = match *meta.level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        Line { severity, buf: Vec::new() }
    }
}

impl Write for Line {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        const DAEMON: u8 = 3;
        let msg = format!("<{}>pppgate[{}]: {}", DAEMON * 8 + self.severity, std::process::id(), text);
        if let Ok(s) = UnixDatagram::unbound() {
            let _ = s.send_to(msg.as_bytes(), "/dev/log");
        }
    }
}
