//! Forwards `tracing` events from policy-core to pppd's own log (syslog and `logfile`).
//!
//! Events are formatted on pppd's thread (the only thread the plugin runs on) and handed to the
//! shim's logger line by line. The level maps onto pppd's levels: ERROR → error, WARN → warn,
//! INFO → notice (so it shows up in default logfiles), DEBUG/TRACE → dbglog.

use std::io;

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

struct PppdWriter {
    level: shim::Level,
    buf: Vec<u8>,
}

impl io::Write for PppdWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PppdWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            shim::log(self.level, line.trim_end());
        }
    }
}

struct MakePppd;

impl<'a> MakeWriter<'a> for MakePppd {
    type Writer = PppdWriter;
    fn make_writer(&'a self) -> PppdWriter {
        PppdWriter { level: shim::Level::Notice, buf: Vec::new() }
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> PppdWriter {
        let level = match *meta.level() {
            Level::ERROR => shim::Level::Error,
            Level::WARN => shim::Level::Warn,
            Level::INFO => shim::Level::Notice,
            _ => shim::Level::Debug,
        };
        PppdWriter { level, buf: Vec::new() }
    }
}

/// Installs the forwarding subscriber (once per process; a second call is a no-op).
pub fn install() {
    let _ = tracing_subscriber::fmt()
        .with_writer(MakePppd)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_level(false)
        .with_max_level(Level::INFO)
        .try_init();
}
