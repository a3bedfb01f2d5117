//! A small synchronous netlink codec: message building with nested attributes, request/ack,
//! dumps and nfnetlink batches. Synchronous and self-contained on purpose: it runs inside pppd's
//! single-threaded loop (no runtime, no threads) and in the CLI alike. Every receive has a timeout,
//! so a kernel that does not answer can never hang pppd.
//!
//! The socket itself is `netlink-sys`'s (the rust-netlink family's socket layer, synchronous, no
//! runtime): it sets the netlink socket options nix has no safe API for, above all
//! `NETLINK_GET_STRICT_CHK` ([`Socket::strict`]), without which the kernel ignores every filter
//! in a dump request and sends the whole table.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::socket::{recv, send, setsockopt, sockopt, MsgFlags};
use nix::sys::time::TimeVal;

use crate::error::{Error, Result};

pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_MULTI: u16 = 0x02;
pub const NLM_F_ACK: u16 = 0x04;
pub const NLM_F_ECHO: u16 = 0x08;
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
pub const NLM_F_NONREC: u16 = 0x100;

pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// The receive buffer a socket starts with. The kernel's dump datagrams are at most 32 KiB and
/// single replies are small; a larger datagram grows the buffer (its size is peeked first). Not a
/// megabyte up front: the plugin opens several sockets per pppd event, and zeroing a megabyte for
/// each kept ~4.5 MB of private memory in every pppd and cost a memset per socket (measured in
/// the lab, benches/lab_connect_path.rs).
const RECV_BUF: usize = 64 << 10;

pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds one netlink message: header, fixed family header, attributes.
#[derive(Debug, Clone)]
pub struct MsgBuilder {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl MsgBuilder {
    pub fn new(ty: u16, flags: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // len, patched in finish
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // seq
        buf.extend_from_slice(&0u32.to_ne_bytes()); // pid
        MsgBuilder { buf, nests: Vec::new() }
    }

    /// Appends raw bytes (a family header such as `ifinfomsg`), padded to 4 bytes.
    pub fn bytes(mut self, data: &[u8]) -> Self {
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub fn attr(mut self, ty: u16, data: &[u8]) -> Self {
        let len = 4 + data.len();
        assert!(len <= u16::MAX as usize, "netlink attribute too large");
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    pub fn attr_u8(self, ty: u16, v: u8) -> Self {
        self.attr(ty, &[v])
    }
    pub fn attr_u16(self, ty: u16, v: u16) -> Self {
        self.attr(ty, &v.to_ne_bytes())
    }
    pub fn attr_u32(self, ty: u16, v: u32) -> Self {
        self.attr(ty, &v.to_ne_bytes())
    }
    pub fn attr_u32_be(self, ty: u16, v: u32) -> Self {
        self.attr(ty, &v.to_be_bytes())
    }
    pub fn attr_u64_be(self, ty: u16, v: u64) -> Self {
        self.attr(ty, &v.to_be_bytes())
    }
    /// A NUL-terminated string attribute.
    pub fn attr_str(self, ty: u16, s: &str) -> Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v)
    }

    pub fn nest_start(mut self, ty: u16) -> Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub fn nest_end(mut self) -> Self {
        let start = self.nests.pop().expect("nest_end without nest_start");
        let len = self.buf.len() - start;
        assert!(len <= u16::MAX as usize, "netlink nest too large");
        self.buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
        self
    }

    /// Header type of the message being built.
    pub fn msg_type(&self) -> u16 {
        u16::from_ne_bytes([self.buf[4], self.buf[5]])
    }

    pub fn flags(&self) -> u16 {
        u16::from_ne_bytes([self.buf[6], self.buf[7]])
    }

    /// Finishes the message with `seq`; the length is patched in.
    pub fn finish(mut self, seq: u32) -> Vec<u8> {
        assert!(self.nests.is_empty(), "unclosed netlink nest");
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// One received message.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// Splits a receive buffer into messages.
pub fn messages(buf: &[u8]) -> Vec<Msg<'_>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
        let flags = u16::from_ne_bytes(buf[off + 6..off + 8].try_into().unwrap());
        let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
        out.push(Msg { ty, flags, seq, payload: &buf[off + NLMSG_HDRLEN..off + len] });
        off += align4(len);
    }
    out
}

/// Iterates the attributes in `buf` as (type without flags, payload).
pub fn attrs(buf: &[u8]) -> AttrIter<'_> {
    AttrIter { buf, off: 0 }
}

pub struct AttrIter<'a> {
    buf: &'a [u8],
    off: usize,
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.off + 4 > self.buf.len() {
            return None;
        }
        let len = u16::from_ne_bytes([self.buf[self.off], self.buf[self.off + 1]]) as usize;
        let ty = u16::from_ne_bytes([self.buf[self.off + 2], self.buf[self.off + 3]]) & NLA_TYPE_MASK;
        if len < 4 || self.off + len > self.buf.len() {
            return None;
        }
        let data = &self.buf[self.off + 4..self.off + len];
        self.off += align4(len);
        Some((ty, data))
    }
}

pub fn attr_str(data: &[u8]) -> String {
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

pub fn attr_u32(data: &[u8]) -> Option<u32> {
    data.get(..4).map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
}

pub fn attr_u32_be(data: &[u8]) -> Option<u32> {
    data.get(..4).map(|b| u32::from_be_bytes(b.try_into().unwrap()))
}

pub fn attr_u64(data: &[u8]) -> Option<u64> {
    data.get(..8).map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
}

pub fn attr_u64_be(data: &[u8]) -> Option<u64> {
    data.get(..8).map(|b| u64::from_be_bytes(b.try_into().unwrap()))
}

/// The answer to one request of [`Socket::transact`]: its data messages as (type, payload), or
/// the error the kernel gave for it.
pub type Answer = std::result::Result<Vec<(u16, Vec<u8>)>, io::Error>;

/// Which netlink family a socket speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Route,
    Netfilter,
    /// Generic netlink (the WireGuard family).
    Generic,
}

/// A netlink socket with a receive timeout.
pub struct Socket {
    fd: netlink_sys::Socket,
    seq: u32,
    port: u32,
    buf: Vec<u8>,
    strict: bool,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket").field("fd", &self.fd.as_raw_fd()).field("port", &self.port).finish()
    }
}

fn sys(op: &str, e: nix::Error) -> Error {
    Error::Netlink { op: op.to_string(), source: io::Error::from_raw_os_error(e as i32) }
}

fn io_err(op: &str, source: io::Error) -> Error {
    Error::Netlink { op: op.to_string(), source }
}

impl Socket {
    pub fn open(family: Family) -> Result<Socket> {
        let proto = match family {
            Family::Route => netlink_sys::protocols::NETLINK_ROUTE,
            Family::Netfilter => netlink_sys::protocols::NETLINK_NETFILTER,
            Family::Generic => netlink_sys::protocols::NETLINK_GENERIC,
        };
        // netlink-sys opens it with SOCK_CLOEXEC.
        let mut fd = netlink_sys::Socket::new(proto).map_err(|e| io_err("socket", e))?;
        let addr = fd.bind_auto().map_err(|e| io_err("bind", e))?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(RECV_TIMEOUT.as_secs() as _, 0))
            .map_err(|e| sys("setsockopt", e))?;
        let _ = setsockopt(&fd, sockopt::RcvBuf, &(4 << 20));
        let seq = (std::process::id() << 8)
            ^ (nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map(|t| t.tv_nsec() as u32).unwrap_or(1));
        Ok(Socket { fd, seq, port: addr.port_number(), buf: vec![0u8; RECV_BUF], strict: false })
    }

    /// Turns on `NETLINK_GET_STRICT_CHK` (Linux ≥ 4.20): the kernel then validates dump requests
    /// strictly and honours their filters (a route dump by table, protocol and output device; a
    /// link dump by kind), so a session-scope read gets that session's objects instead of the whole
    /// box. Returns whether the kernel accepted it; without it every filtered reader still filters
    /// what it receives itself (correct, only slower).
    pub fn strict(&mut self) -> bool {
        if !self.strict {
            self.strict = self.fd.set_netlink_get_strict_chk(true).is_ok();
        }
        self.strict
    }

    /// Whether [`Socket::strict`] is in effect.
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send_raw(&self, op: &str, data: &[u8]) -> Result<()> {
        let n = send(self.fd.as_raw_fd(), data, MsgFlags::empty()).map_err(|e| sys(op, e))?;
        if n != data.len() {
            return Err(Error::Netlink { op: op.into(), source: io::Error::other("short send") });
        }
        Ok(())
    }

    /// Receives the next datagram into the buffer. `peek`: size it first (MSG_PEEK|MSG_TRUNC)
    /// and grow the buffer, as dumps of devices with many VFs can exceed it. Without: one
    /// syscall; a datagram larger than the buffer is an error (the answers to gets of single
    /// objects are a few hundred bytes, and the many-gets readers receive thousands of them).
    fn recv_into(&mut self, op: &str, peek: bool) -> Result<usize> {
        loop {
            if peek {
                // MSG_PEEK | MSG_TRUNC: the next datagram's whole length, without taking it.
                match recv(self.fd.as_raw_fd(), &mut [], MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC) {
                    Ok(n) if n > self.buf.len() => self.buf.resize(n, 0),
                    Ok(_) => {}
                    Err(nix::Error::EINTR) => continue,
                    Err(nix::Error::EAGAIN) => {
                        return Err(Error::Netlink {
                            op: op.into(),
                            source: io::Error::new(io::ErrorKind::TimedOut, "no answer from the kernel"),
                        })
                    }
                    Err(e) => return Err(sys(op, e)),
                }
            }
            match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_TRUNC) {
                Ok(n) if n > self.buf.len() => {
                    self.buf.resize(n, 0);
                    return Err(Error::Netlink {
                        op: op.into(),
                        source: io::Error::other(format!("a {n}-byte answer did not fit the receive buffer")),
                    });
                }
                Ok(n) => return Ok(n),
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => {
                    return Err(Error::Netlink {
                        op: op.into(),
                        source: io::Error::new(io::ErrorKind::TimedOut, "no answer from the kernel"),
                    })
                }
                Err(e) => return Err(sys(op, e)),
            }
        }
    }

    fn recv_raw(&mut self, op: &str) -> Result<usize> {
        self.recv_into(op, true)
    }

    /// Sends one request with NLM_F_ACK and waits for its acknowledgement.
    pub fn request(&mut self, op: &str, msg: MsgBuilder) -> Result<()> {
        let seq = self.next_seq();
        let mut m = msg;
        if m.flags() & NLM_F_ACK == 0 {
            m = set_flags(m, NLM_F_ACK);
        }
        let data = m.finish(seq);
        self.send_raw(op, &data)?;
        self.wait_acks(op, &[seq])
    }

    /// Sends a dump request and returns every reply message of `reply_type` as (type, payload).
    pub fn dump(&mut self, op: &str, msg: MsgBuilder) -> Result<Vec<(u16, Vec<u8>)>> {
        let seq = self.next_seq();
        let data = msg.finish(seq);
        self.send_raw(op, &data)?;
        let mut out = Vec::new();
        loop {
            let n = self.recv_raw(op)?;
            let mut done = false;
            for m in messages(&self.buf[..n]) {
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_DONE => done = true,
                    NLMSG_ERROR => {
                        let err = parse_error(m.payload);
                        if let Some(e) = err {
                            return Err(Error::Netlink { op: op.into(), source: e });
                        }
                    }
                    NLMSG_NOOP => {}
                    ty => out.push((ty, m.payload.to_vec())),
                }
            }
            if done {
                return Ok(out);
            }
        }
    }

    /// Sends a request that is answered by one message (or an error), e.g. a route lookup.
    pub fn dump_single(&mut self, op: &str, msg: MsgBuilder) -> Result<Vec<(u16, Vec<u8>)>> {
        let seq = self.next_seq();
        let data = msg.finish(seq);
        self.send_raw(op, &data)?;
        loop {
            let n = self.recv_raw(op)?;
            let mut out = Vec::new();
            for m in messages(&self.buf[..n]) {
                if m.seq != seq {
                    continue;
                }
                if m.ty == NLMSG_ERROR {
                    if let Some(e) = parse_error(m.payload) {
                        return Err(Error::Netlink { op: op.into(), source: e });
                    }
                    continue;
                }
                out.push((m.ty, m.payload.to_vec()));
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    /// Sends several requests in one datagram (an nfnetlink batch is such a sequence framed by
    /// BATCH_BEGIN/END) and waits for an ack for each message that asked for one.
    pub fn batch(&mut self, op: &str, msgs: Vec<MsgBuilder>) -> Result<()> {
        let mut data = Vec::new();
        let mut want = Vec::new();
        for m in msgs {
            let seq = self.next_seq();
            if m.flags() & NLM_F_ACK != 0 {
                want.push(seq);
            }
            data.extend_from_slice(&m.finish(seq));
        }
        self.ensure_sndbuf(data.len());
        self.send_raw(op, &data)?;
        self.wait_acks(op, &want)
    }

    /// An nfnetlink batch must arrive in one datagram, and the kernel refuses a datagram larger
    /// than the send buffer: grow it for large batches (reconcile of many sessions).
    fn ensure_sndbuf(&mut self, len: usize) {
        const DEFAULT_OK: usize = 160 * 1024;
        if len > DEFAULT_OK {
            let want = len.saturating_mul(2).min(64 << 20);
            if setsockopt(&self.fd, sockopt::SndBufForce, &want).is_err() {
                let _ = setsockopt(&self.fd, sockopt::SndBuf, &want);
            }
        }
    }

    /// Sends independent requests in one datagram, each asking for an ack, and returns each one's
    /// answer in order: the messages it produced, or the error it alone got. One round trip for
    /// several gets (the connect path asks four sets about one address this way).
    pub fn transact(&mut self, op: &str, msgs: Vec<MsgBuilder>) -> Result<Vec<Answer>> {
        let mut data = Vec::new();
        let mut seqs = Vec::with_capacity(msgs.len());
        for m in msgs {
            let seq = self.next_seq();
            data.extend_from_slice(&set_flags(m, NLM_F_ACK).finish(seq));
            seqs.push(seq);
        }
        self.send_raw(op, &data)?;
        let mut got: Vec<Vec<(u16, Vec<u8>)>> = vec![Vec::new(); seqs.len()];
        let mut done: Vec<Option<Option<io::Error>>> = (0..seqs.len()).map(|_| None).collect();
        let mut left = seqs.len();
        while left > 0 {
            let n = self.recv_into(op, false)?;
            for m in messages(&self.buf[..n]) {
                let Some(i) = seqs.iter().position(|s| *s == m.seq) else { continue };
                if done[i].is_some() {
                    continue;
                }
                match m.ty {
                    NLMSG_ERROR => {
                        done[i] = Some(parse_error(m.payload));
                        left -= 1;
                    }
                    NLMSG_NOOP | NLMSG_DONE => {}
                    ty => got[i].push((ty, m.payload.to_vec())),
                }
            }
        }
        Ok(done
            .into_iter()
            .zip(got)
            .map(|(d, g)| match d.flatten() {
                None => Ok(g),
                Some(e) => Err(e),
            })
            .collect())
    }

    /// One request whose answer carries data (a get of one object): its messages, or its error.
    pub fn get(&mut self, op: &str, msg: MsgBuilder) -> Result<Vec<(u16, Vec<u8>)>> {
        let mut answers = self.transact(op, vec![msg])?;
        answers.pop().expect("one answer per request").map_err(|source| Error::Netlink { op: op.into(), source })
    }

    fn wait_acks(&mut self, op: &str, seqs: &[u32]) -> Result<()> {
        let mut pending: Vec<u32> = seqs.to_vec();
        let mut first_err: Option<io::Error> = None;
        while !pending.is_empty() {
            let n = self.recv_raw(op)?;
            for m in messages(&self.buf[..n]) {
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                if let Some(pos) = pending.iter().position(|s| *s == m.seq) {
                    pending.remove(pos);
                    if let Some(e) = parse_error(m.payload) {
                        first_err.get_or_insert(e);
                        // After an error in a batch the kernel aborts it; later acks never come.
                        pending.retain(|s| *s < m.seq);
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(Error::Netlink { op: op.into(), source: e }),
            None => Ok(()),
        }
    }
}

/// What one wait on a socket subscribed to a multicast group brought.
#[derive(Debug)]
pub enum Events {
    /// The messages of one datagram, as (type, payload).
    Messages(Vec<(u16, Vec<u8>)>),
    /// Nothing arrived within the socket's receive timeout.
    TimedOut,
    /// The kernel dropped events (ENOBUFS, or a datagram larger than the buffer): the listener
    /// must assume anything happened.
    Overrun,
}

impl Socket {
    /// Joins multicast `group` of the socket's family (nfnetlink: `NFNLGRP_NFTABLES`).
    pub fn subscribe(&mut self, group: u32) -> Result<()> {
        self.fd.add_membership(group).map_err(|e| io_err("join netlink group", e))
    }

    /// Sets how long [`Socket::recv_events`] waits.
    pub fn set_recv_timeout(&mut self, t: Duration) -> Result<()> {
        let tv = TimeVal::new(t.as_secs() as _, t.subsec_micros() as _);
        setsockopt(&self.fd, sockopt::ReceiveTimeout, &tv).map_err(|e| sys("setsockopt", e))
    }

    /// Waits for the next datagram of events.
    pub fn recv_events(&mut self) -> Result<Events> {
        loop {
            match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_TRUNC) {
                Ok(n) if n > self.buf.len() => {
                    self.buf.resize(n, 0);
                    return Ok(Events::Overrun);
                }
                Ok(n) => {
                    let out = messages(&self.buf[..n]).into_iter().map(|m| (m.ty, m.payload.to_vec())).collect();
                    return Ok(Events::Messages(out));
                }
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => return Ok(Events::TimedOut),
                Err(nix::Error::ENOBUFS) => return Ok(Events::Overrun),
                Err(e) => return Err(sys("receive netlink events", e)),
            }
        }
    }
}

fn set_flags(m: MsgBuilder, extra: u16) -> MsgBuilder {
    let mut m = m;
    let f = m.flags() | extra;
    m.buf[6..8].copy_from_slice(&f.to_ne_bytes());
    m
}

/// Parses an NLMSG_ERROR payload: `None` for an ack (error 0), else the errno with the kernel's
/// extended-ack message when present.
fn parse_error(payload: &[u8]) -> Option<io::Error> {
    let code = i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?);
    if code == 0 {
        return None;
    }
    let errno = -code;
    // With NETLINK_EXT_ACK the original header (and maybe payload) follows, then TLVs.
    let orig_len = payload.get(4..8).map(|b| u32::from_ne_bytes(b.try_into().unwrap()) as usize).unwrap_or(0);
    let mut msg = None;
    for skip in [4 + NLMSG_HDRLEN, 4 + align4(orig_len)] {
        if let Some(tlvs) = payload.get(skip..) {
            for (ty, data) in attrs(tlvs) {
                if ty == 1 {
                    // NLMSGERR_ATTR_MSG
                    let s = attr_str(data);
                    if !s.is_empty() && s.is_ascii() {
                        msg = Some(s);
                    }
                }
            }
        }
        if msg.is_some() {
            break;
        }
    }
    let base = io::Error::from_raw_os_error(errno);
    Some(match msg {
        Some(m) => io::Error::new(base.kind(), format!("{base} ({m})")),
        None => base,
    })
}

/// The errno inside a netlink error, if the error is one.
pub fn errno_of(e: &Error) -> Option<i32> {
    match e {
        Error::Netlink { source, .. } => source.raw_os_error().or_else(|| {
            // Errors rebuilt with an ext-ack message lose raw_os_error; recover from the kind.
            match source.kind() {
                io::ErrorKind::NotFound => Some(libc::ENOENT),
                io::ErrorKind::AlreadyExists => Some(libc::EEXIST),
                _ => None,
            }
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_nests_and_pads() {
        let m = MsgBuilder::new(16, 0)
            .bytes(&[1, 2, 3])
            .attr_str(1, "ab")
            .nest_start(2)
            .attr_u32(1, 7)
            .nest_end()
            .finish(9);
        assert_eq!(m.len() % 4, 0);
        let msgs = messages(&m);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].ty, 16);
        assert_eq!(msgs[0].seq, 9);
        let body = &msgs[0].payload[4..];
        let a: Vec<_> = attrs(body).collect();
        assert_eq!(a.len(), 2);
        assert_eq!(attr_str(a[0].1), "ab");
        assert_eq!(a[1].0, 2);
        let inner: Vec<_> = attrs(a[1].1).collect();
        assert_eq!(attr_u32(inner[0].1), Some(7));
    }

    #[test]
    fn truncated_input_does_not_panic() {
        let m = MsgBuilder::new(16, 0).attr_str(1, "hello").finish(1);
        for cut in 0..m.len() {
            let _ = messages(&m[..cut]);
            let _ = attrs(&m[..cut]).count();
        }
    }
}
