#!/usr/bin/env python3
"""A stand-in for pppd in kernel tests: owns a TUN device named like a ppp interface and moves
its counters on command. Its own PID and start time play PPPD_PID and START_TS.

stdin commands (one per line, each answered with "ok ..." on stdout):
  rx <count> <size>   write <count> IPv4/UDP packets of <size> bytes into the TUN fd: the
                      interface's rx counters grow by count*size (received from the "client")
  tx <count> <size>   send <count> UDP datagrams to the peer through the interface and wait
                      until the device counted them: tx grows by count*(size+28)
  send <src> <dst> <count> <size>
                      write <count> IPv4/UDP packets (to port 9) with a source address of our
                      choosing into the TUN fd: a client forging its source; answers with the
                      nanoseconds the writes took (the kernel forwards each in the write)
  recreate            close the TUN fd and open a new device of the same name (new ifindex)
  quit
"""
import fcntl
import os
import select
import socket
import struct
import sys
import threading
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def tx_packets(name):
    with open("/sys/class/net/%s/statistics/tx_packets" % name) as f:
        return int(f.read())


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def packet(src, dst, size, dport=9):
    # To a non-local address with forwarding off: the kernel counts and drops it, no ICMP back.
    payload = b"p" * (size - 28)
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, 0, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + udp


class Tun:
    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.fd = open_tun(name)
        threading.Thread(target=self.drain, daemon=True).start()

    def drain(self):
        while True:
            with self.lock:
                fd = self.fd
            try:
                r, _, _ = select.select([fd], [], [], 0.05)
                if r:
                    os.read(fd, 65536)
            except OSError:
                pass

    def recreate(self):
        with self.lock:
            os.close(self.fd)
            # The old device is unregistered asynchronously; wait for its name to be free.
            for _ in range(200):
                try:
                    self.fd = open_tun(self.name)
                    return
                except OSError:
                    time.sleep(0.01)
            self.fd = open_tun(self.name)


def main():
    name, peer = sys.argv[1], sys.argv[2]
    tun = Tun(name)
    print("ready %d" % os.getpid(), flush=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "rx":
            n, size = int(cmd[1]), int(cmd[2])
            pkt = packet(peer, "198.51.100.77", size)
            for _ in range(n):
                os.write(tun.fd, pkt)
            print("ok rx %d" % (n * size), flush=True)
        elif cmd[0] == "tx":
            n, size = int(cmd[1]), int(cmd[2])
            # A TUN device counts tx when its reader takes the packet: wait for the drain thread,
            # so the counters are settled when we answer.
            before = tx_packets(name)
            for _ in range(n):
                sock.sendto(b"t" * size, (peer, 9))
            deadline = time.time() + 5
            while tx_packets(name) < before + n and time.time() < deadline:
                time.sleep(0.005)
            print("ok tx %d" % (tx_packets(name) - before), flush=True)
        elif cmd[0] == "send":
            src, dst, n, size = cmd[1], cmd[2], int(cmd[3]), int(cmd[4])
            pkt = packet(src, dst, size)
            t0 = time.perf_counter_ns()
            for _ in range(n):
                os.write(tun.fd, pkt)
            print("ok send %d %d" % (n, time.perf_counter_ns() - t0), flush=True)
        elif cmd[0] == "recreate":
            tun.recreate()
            print("ok recreate", flush=True)
        elif cmd[0] == "quit":
            print("ok quit", flush=True)
            return
        else:
            print("error unknown command", flush=True)


if __name__ == "__main__":
    main()
