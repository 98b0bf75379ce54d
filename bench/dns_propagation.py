#!/usr/bin/env python3
"""How long a replica's change takes to reach every node's DNS.

Each round scales a service up by one, then back down:
  up    from the new task's `running` event (the report committed and
        applied on the server streaming events) to every node's DNS
        answering with its address;
  down  from its `stop` event (desired shutdown committed) to every
        node's DNS no longer answering with it.
A thread asks every node's DNS for the service's name over UDP in a tight
loop and notes when each address appears in and leaves each node's
answer. Times are this machine's monotonic clock.

Usage: dns_propagation.py BERTHCTL SERVICE ROUNDS DNS_ADDR... (env BERTH_SERVER)
Prints one line per round and a summary; exits 1 if a round times out.
"""

import json
import random
import socket
import struct
import subprocess
import sys
import threading
import time


def query(name, ident):
    header = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    return header + labels + b"\0" + struct.pack(">HH", 1, 1)


def skip_name(msg, at):
    while True:
        n = msg[at]
        if n == 0:
            return at + 1
        if n & 0xC0 == 0xC0:
            return at + 2
        at += 1 + n


def addresses(msg):
    """The A records of a DNS answer, as dotted strings; None for an
    answer that says nothing (an error code, or truncated)."""
    _, flags, qd, an, _, _ = struct.unpack(">HHHHHH", msg[:12])
    if flags & 0x000F or flags & 0x0200:
        return None
    at = 12
    for _ in range(qd):
        at = skip_name(msg, at) + 4
    out = set()
    for _ in range(an):
        at = skip_name(msg, at)
        rtype, _, _, rdlen = struct.unpack(">HHIH", msg[at : at + 10])
        at += 10
        if rtype == 1 and rdlen == 4:
            out.add(socket.inet_ntoa(msg[at : at + 4]))
        at += rdlen
    return out


class Watcher(threading.Thread):
    """Asks every server for `name` in turn, forever; remembers when each
    address last appeared in (and left) each server's answer."""

    def __init__(self, servers, name):
        super().__init__(daemon=True)
        self.servers, self.name = servers, name
        self.lock = threading.Lock()
        self.current = {s: set() for s in servers}
        self.appeared, self.left = {}, {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.5)

    def run(self):
        while True:
            for s in self.servers:
                ident = random.randrange(65536)
                self.sock.sendto(query(self.name, ident), (s, 53))
                try:
                    while True:
                        msg, source = self.sock.recvfrom(4096)
                        if source == (s, 53) and struct.unpack(">H", msg[:2])[0] == ident:
                            break
                except OSError:
                    continue
                now = time.monotonic()
                got = addresses(msg)
                if got is None:
                    continue
                with self.lock:
                    for a in got - self.current[s]:
                        self.appeared[(s, a)] = now
                    for a in self.current[s] - got:
                        self.left[(s, a)] = now
                    self.current[s] = got
            time.sleep(0.0005)

    def everywhere(self, address, since, present):
        """When the last server reached the wanted state for `address`
        after `since`; None while one has not."""
        with self.lock:
            times = []
            for s in self.servers:
                if (address in self.current[s]) != present:
                    return None
                t = (self.appeared if present else self.left).get((s, address))
                times.append(t if t is not None and t >= since else since)
            return max(times)


class Events(threading.Thread):
    """`berthctl events -o json`, each line stamped as it arrives."""

    def __init__(self, ctl):
        super().__init__(daemon=True)
        self.proc = subprocess.Popen([ctl, "events", "-o", "json"], stdout=subprocess.PIPE, text=True)
        self.lock = threading.Lock()
        self.seen = []

    def run(self):
        for line in self.proc.stdout:
            now = time.monotonic()
            with self.lock:
                self.seen.append((now, json.loads(line)))

    def find(self, since, action, service):
        with self.lock:
            for t, e in self.seen:
                if t >= since and e["kind"] == "task" and e["action"] == action and e["name"].startswith(service + "."):
                    return t, e
        return None


def wait(what, limit, check):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = check()
        if got is not None:
            return got
        time.sleep(0.001)
    sys.exit(f"timed out: {what}")


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ctl, service, rounds, servers = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    spec = json.loads(subprocess.check_output([ctl, "service", "inspect", service, "-o", "json"]))
    base = spec["spec"]["replicas"]
    watcher = Watcher(servers, f"{service}.berth.local")
    watcher.start()
    events = Events(ctl)
    events.start()
    time.sleep(1)  # the event stream is open
    ups, downs, totals = [], [], []
    for r in range(rounds):
        start = time.monotonic()
        subprocess.check_output([ctl, "service", "scale", "--detach", f"{service}={base + 1}"])
        t_run, e = wait("the new replica's running event", 60, lambda: events.find(start, "running", service))
        address = e["attributes"]["address"]
        t_dns = wait(f"{address} on every node's DNS", 30, lambda: watcher.everywhere(address, start, True))
        ups.append((t_dns - t_run) * 1000)
        totals.append((t_dns - start) * 1000)

        start = time.monotonic()
        subprocess.check_output([ctl, "service", "scale", "--detach", f"{service}={base}"])
        t_stop, _ = wait("the replica's stop event", 60, lambda: events.find(start, "stop", service))
        t_gone = wait(f"{address} gone from every node's DNS", 30, lambda: watcher.everywhere(address, start, False))
        downs.append((t_gone - t_stop) * 1000)
        print(
            f"round {r + 1}: {address} up {ups[-1]:.1f} ms after running "
            f"({totals[-1]:.0f} ms after scale), down {downs[-1]:.1f} ms after stop",
            flush=True,
        )
        time.sleep(0.2)
    events.proc.terminate()
    for what, xs in (("up (running -> every node)", ups), ("down (stop -> every node)", downs)):
        print(
            f"{what}: p50 {percentile(xs, 50):.1f} ms, p99 {percentile(xs, 99):.1f} ms, "
            f"max {max(xs):.1f} ms over {len(xs)} rounds"
        )
    print(f"scale -> resolving on every node: p50 {percentile(totals, 50):.0f} ms, p99 {percentile(totals, 99):.0f} ms")


if __name__ == "__main__":
    main()
