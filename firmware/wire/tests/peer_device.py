#!/usr/bin/env python3
"""An independent Ferry *device* over TCP, written from PROTOCOL.md (sections 1-6) only.

A second implementation of what the firmware core does, used as extra load in power-cut tests:

    python3 peer_device.py --connect HOST:PORT --id DEVICE_ID --sensors N --interval-ms MS \\
        --duration-s S --report FILE [--seed K] [--drain-timeout-s 30] [--ring-capacity 100000]

It samples N sensors (`s0`..`s{N-1}`, sine waves) every MS milliseconds for S seconds into a RAM
ring, sends them to the gateway (Hello / Welcome handshake, Samples, Heartbeat, go-back-N
retransmission with an adaptive RTO, fast retransmission, the overload window), releases what the
gateway acks, answers HelloRequest and Command, and reconnects with a short backoff whenever the
link drops. After S seconds it stops sampling and waits, connected or reconnecting, until every
sample is acked or the drain timeout passes; then (or on SIGTERM) it writes FILE:

    {"device_id": ID, "boots": [{"boot_id": B, "generated": G, "acked": A, "acked_next": NEXT,
     "dropped": D}], "disconnects": K}

`acked_next`: every seq below it was acked by the gateway; `acked`: samples released by an ack;
`dropped`: samples evicted from the full ring before any ack (a `Reboot` command starts a new
boot and loses the old boot's unacked samples, which then count in neither). Exit status 0,
nonzero only on an internal error (with a traceback). Standard library only.
"""
import argparse
import json
import math
import os
import random
import selectors
import signal
import socket
import struct
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_peer import (  # noqa: E402  (the codec of the same directory)
    MAX_FRAME,
    command_result,
    decode_run,
    frame,
    heartbeat,
    hello,
    samples,
)

TICK_HZ = 1000  # ticks are milliseconds since the boot
FIRMWARE = "peer-py/1"
UNIT = "°C"
RING_CAPACITY = 100_000
MAX_PER_FRAME = 32
LAST_SEQ = 0xFFFFFFFE
HELLO_INTERVAL = 1.0
HEARTBEAT_INTERVAL = 1.0
LINK_TIMEOUT = 5.0
RTO_INITIAL, RTO_MIN, RTO_MAX = 1.0, 0.2, 10.0
MIN_INTERVAL_MS, MAX_INTERVAL_MS = 10, 86_400_000
RECENT_COMMANDS = 8
OUT_HIGH_WATER = 16 * 1024  # bytes queued for the socket before new frames wait

OK, UNKNOWN_SENSOR, INVALID_ARGUMENT, UNSUPPORTED, FAILED = range(5)


class Boot:
    """One boot of the device: boot id, tick origin, schedule, RAM ring, send and ack state."""

    def __init__(self, boot_id, sensors, interval_ms, capacity, now):
        self.boot_id = boot_id
        self.capacity = capacity
        self.t0 = now
        self.intervals = [interval_ms] * sensors
        self.due = [0] * sensors  # ticks of each sensor's next scheduled sample
        self.generated = 0  # also the next sequence number
        self.acked = 0
        self.acked_next = 0
        self.dropped = 0
        self.ring = []  # (ticks, sensor, f32 bytes) of seqs base + i - head
        self.head = 0
        self.base = 0  # seq of ring[head]
        self.send_seq = 0  # next seq to send (go-back-N rewinds it to the oldest held)
        self.highest_sent = 0  # one past the highest seq ever sent
        # retransmission (section 4)
        self.srtt = None
        self.rttvar = None
        self.rto = RTO_INITIAL
        self.timing = None  # (last seq of the timed frame, sent at)
        self.timer = None  # retransmission timer start, None while nothing is in flight
        self.last_rewind = None

    def ticks(self, now):
        return int((now - self.t0) * TICK_HZ)

    # ---- the ring

    def held(self):
        return len(self.ring) - self.head

    def oldest(self):
        return self.base

    def push(self, item):
        if self.held() >= self.capacity:
            self.head += 1
            self.base += 1
            self.dropped += 1
            self.send_seq = max(self.send_seq, self.base)
        self.ring.append(item)
        self.generated += 1
        self._compact()

    def release_below(self, n):
        k = max(0, min(n, self.generated) - self.base)
        self.head += k
        self.base += k
        self._compact()
        return k

    def _compact(self):
        if self.head > 4096 and self.head * 2 > len(self.ring):
            del self.ring[:self.head]
            self.head = 0

    def item(self, seq):
        return self.ring[self.head + seq - self.base]

    # ---- sampling

    def sample(self, now, stop_ticks):
        """Takes every sample scheduled up to now and before stop_ticks, in time order."""
        limit = min(self.ticks(now), stop_ticks - 1)
        while self.generated <= LAST_SEQ:
            live = [i for i, iv in enumerate(self.intervals) if iv > 0]
            if not live:
                return
            s = min(live, key=lambda i: (self.due[i], i))
            t = self.due[s]
            if t > limit:
                return
            period = 10_000 + 1_000 * s
            value = 20.0 + 5.0 * math.sin(2 * math.pi * t / period) + s
            self.push((t, s, struct.pack("<f", value)))
            self.due[s] = t + self.intervals[s]

    # ---- acks and retransmission

    def apply_ack(self, now, n):
        n = min(n, self.generated)  # an ack beyond the next seq is clamped to it
        self.acked_next = max(self.acked_next, n)
        released = self.release_below(n)
        if released:
            self.acked += released
            if self.timing and n > self.timing[0]:
                self._measure(now - self.timing[1])
                self.timing = None
            self.send_seq = max(self.send_seq, self.base)
            self.timer = now if self.send_seq > self.base else None
        elif self.held() and n == self.base and self.send_seq > n:
            # Fast retransmission: the gateway is stuck at our oldest held sample although we
            # sent beyond it; at most once per quarter of the RTO.
            if self.last_rewind is None or now - self.last_rewind >= self.rto / 4:
                self.rewind(now)

    def _measure(self, r):
        if self.srtt is None:
            self.srtt, self.rttvar = r, r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        self.rto = min(RTO_MAX, max(RTO_MIN, self.srtt + max(0.010, 4 * self.rttvar)))

    def rewind(self, now):
        self.send_seq = self.base
        self.timing = None  # Karn: samples sent again are never timed
        self.timer = None
        self.last_rewind = now

    def check_timeout(self, now):
        if self.timer is not None and self.send_seq > self.base and now - self.timer >= self.rto:
            self.rto = min(RTO_MAX, self.rto * 2)
            self.rewind(now)

    def next_frame(self, now, window):
        """The next Samples message to send, or None (nothing new, or the window is full)."""
        if self.send_seq < self.base:
            self.send_seq = self.base
        room = self.base + window - self.send_seq
        count = min(MAX_PER_FRAME, self.generated - self.send_seq, room)
        if count <= 0:
            return None
        first = self.send_seq
        msg = samples(self.base, first, [self.item(first + i) for i in range(count)])
        fresh = first + count
        if self.timer is None:
            self.timer = now
        if self.timing is None and first >= self.highest_sent:  # only new samples are timed
            self.timing = (first + count - 1, now)
        self.highest_sent = max(self.highest_sent, fresh)
        self.send_seq = fresh
        return msg

    def report(self):
        return {
            "boot_id": self.boot_id,
            "generated": self.generated,
            "acked": self.acked,
            "acked_next": self.acked_next,
            "dropped": self.dropped,
        }


class Device:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        host, _, port = args.connect.rpartition(":")
        self.addr = (host.strip("[]"), int(port))
        self.start = time.monotonic()
        self.boots = [self.new_boot(self.start)]
        self.disconnects = 0
        self.sock = None
        self.sel = selectors.DefaultSelector()
        self.inbuf = bytearray()
        self.discarding = False
        self.outbuf = bytearray()
        self.connected = False  # handshake done (Welcome for our boot received)
        self.next_hello = 0.0
        self.next_heartbeat = 0.0
        self.last_heard = 0.0
        self.rejected = {}  # reason -> count of runs from the gateway this decoder rejected
        self.ignored = 0  # messages for the other direction
        self.terminate = False
        self.stop_ticks = None
        # [(command id, status, data)] of the last few commands executed; kept across a Reboot
        # command, so that a Reboot the gateway resends (its result lost) is not executed twice
        self.recent = []

    def new_boot(self, now):
        used = {b.boot_id for b in getattr(self, "boots", [])}
        while True:
            boot_id = self.rng.randrange(1, 1 << 32)
            if boot_id not in used:
                return Boot(boot_id, self.args.sensors, self.args.interval_ms,
                            self.args.ring_capacity, now)

    @property
    def boot(self):
        return self.boots[-1]

    # ---- the link

    def connect(self):
        try:
            sock = socket.create_connection(self.addr, timeout=1.0)
        except OSError:
            return False
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.sel.register(sock, selectors.EVENT_READ)
        self.inbuf.clear()
        self.outbuf.clear()
        self.discarding = False
        self.connected = False
        now = time.monotonic()
        self.last_heard = now
        self.send_hello(now)
        return True

    def drop_link(self):
        if self.sock is not None:
            try:
                self.sel.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.sock.close()
            self.sock = None
            self.disconnects += 1
        self.connected = False
        self.outbuf.clear()

    def queue(self, message):
        f = frame(message)
        assert len(f) - 2 <= MAX_FRAME, "frame over the limit"
        self.outbuf += f

    def flush(self):
        """Writes what the socket takes; False if the link broke."""
        while self.outbuf:
            try:
                n = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                return False
            del self.outbuf[:n]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbuf else 0)
        self.sel.modify(self.sock, events)
        return True

    def send_hello(self, now):
        b = self.boot
        sensors = [(i, f"s{i}", UNIT, iv) for i, iv in enumerate(b.intervals)]
        self.queue(hello(self.args.id, FIRMWARE, b.boot_id, TICK_HZ, b.ticks(now), b.generated,
                         sensors))
        self.connected = False
        self.next_hello = now + HELLO_INTERVAL

    def send_heartbeat(self, now):
        b = self.boot
        self.queue(heartbeat(b.ticks(now), min(b.dropped, 0xFFFFFFFF), min(b.held(), 0xFFFF), 0))
        self.next_heartbeat = now + HEARTBEAT_INTERVAL

    def read(self):
        """Reads what arrived; False on EOF or a reset."""
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            if not data:
                return False
            self.inbuf += data
            self.split_runs()

    def split_runs(self):
        while True:
            i = self.inbuf.find(0)
            if i < 0:
                if len(self.inbuf) > MAX_FRAME:  # too_long: discard up to the next delimiter
                    self.inbuf.clear()
                    self.discarding = True
                return
            run = bytes(self.inbuf[:i])
            del self.inbuf[:i + 1]
            if self.discarding:
                self.discarding = False
                self.count_rejected("too_long")
                continue
            if not run:
                continue
            reason, msg = decode_run(run)
            if reason != "ok":
                self.count_rejected(reason)
                continue
            self.handle(time.monotonic(), msg)

    def count_rejected(self, reason):
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def handle(self, now, msg):
        self.last_heard = now
        b = self.boot
        kind = msg[0]
        if kind == "welcome":
            _, boot_id, _utc_ms, next_seq = msg
            if boot_id != b.boot_id:
                return  # stale: a Welcome for another boot
            if next_seq < b.acked_next:
                print(f"peer_device: Welcome next_seq {next_seq} below the acked {b.acked_next}",
                      file=sys.stderr)
            self.connected = True
            b.timing = None  # the outage is no round trip (Karn)
            b.apply_ack(now, next_seq)
            b.rewind(now)  # resend every held sample, from the oldest
            self.next_heartbeat = now
        elif kind == "ack":
            _, boot_id, next_seq = msg
            if boot_id == b.boot_id:
                b.apply_ack(now, next_seq)
        elif kind == "hello_request":
            self.send_hello(now)
        elif kind == "command":
            self.command(now, msg[1], msg[2], msg[3:])
        else:
            self.ignored += 1  # a message for the gateway: an echoing link

    def command(self, now, command_id, kind, fields):
        b = self.boot
        for rid, status, data in self.recent:
            if rid == command_id:  # answered again, not executed twice
                self.queue(command_result(command_id, status, data))
                return
        reboot = False
        if kind == 0:  # SetInterval
            sensor, interval_ms = fields
            if sensor >= len(b.intervals):
                status = UNKNOWN_SENSOR
            elif interval_ms != 0 and not MIN_INTERVAL_MS <= interval_ms <= MAX_INTERVAL_MS:
                status = INVALID_ARGUMENT
            else:
                was = b.intervals[sensor]
                b.intervals[sensor] = interval_ms
                if interval_ms:
                    # the next scheduled sample comes one new interval after the last one, and
                    # not in the past (no burst of catch-up samples)
                    after_last = b.due[sensor] - was + interval_ms if was else 0
                    b.due[sensor] = max(after_last, b.ticks(now))
                status = OK
        elif kind == 2:  # Reboot: answered before the reset
            status, reboot = OK, True
        else:  # Identify (nothing to blink), Opaque (no application payloads)
            status = UNSUPPORTED
        self.recent = (self.recent + [(command_id, status, b"")])[-RECENT_COMMANDS:]
        self.queue(command_result(command_id, status))
        if reboot:
            # The reset forgets the ring; the new boot's Hello follows the CommandResult.
            self.boots.append(self.new_boot(now))
            if self.stop_ticks is not None:
                self.stop_ticks = 0
            self.send_hello(now)

    # ---- the main loop

    def pump(self, now):
        """Sends what is due on a live link."""
        b = self.boot
        if self.connected:
            if b.held() and now - self.last_heard >= LINK_TIMEOUT:
                self.send_hello(now)  # nothing heard for the link timeout: connecting again
            else:
                # The heartbeat goes first: its ticks anchor the gateway's clock mapping, so it
                # should not wait behind a burst of samples.
                if now >= self.next_heartbeat:
                    self.send_heartbeat(time.monotonic())
                b.check_timeout(now)
                window = max(MAX_PER_FRAME, b.capacity // 16)  # overload rule 1
                while len(self.outbuf) < OUT_HIGH_WATER:
                    msg = b.next_frame(now, window)
                    if msg is None:
                        break
                    self.queue(msg)
        if not self.connected and now >= self.next_hello:
            self.send_hello(time.monotonic())

    def run(self):
        args = self.args
        end = self.start + args.duration_s
        drain_end = None
        backoff_until = 0.0
        while not self.terminate:
            now = time.monotonic()
            b = self.boot
            if drain_end is None and now >= end:
                self.stop_ticks = b.ticks(end)
                drain_end = now + args.drain_timeout_s
            b.sample(now, self.stop_ticks if self.stop_ticks is not None else b.ticks(end))
            if drain_end is not None and (b.held() == 0 or now >= drain_end):
                break
            if self.sock is None:
                if now >= backoff_until and not self.connect():
                    backoff_until = time.monotonic() + self.rng.uniform(0.05, 0.2)
                if self.sock is None:
                    time.sleep(min(0.02, max(0.0, backoff_until - time.monotonic())))
                    continue
            self.pump(now)
            if not self.flush():
                self.drop_link()
                backoff_until = time.monotonic() + self.rng.uniform(0.05, 0.2)
                continue
            timeout = 0.01
            for _key, mask in self.sel.select(timeout):
                if mask & selectors.EVENT_READ and not self.read():
                    self.drop_link()
                    backoff_until = time.monotonic() + self.rng.uniform(0.05, 0.2)
                    break
        if self.sock is not None:
            self.flush()
        self.write_report()

    def write_report(self):
        report = {
            "device_id": self.args.id,
            "boots": [b.report() for b in self.boots],
            "disconnects": self.disconnects,
        }
        tmp = self.args.report + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(report, f)
            f.write("\n")
        os.replace(tmp, self.args.report)
        if self.rejected or self.ignored:
            print(f"peer_device: rejected from the gateway {self.rejected}, "
                  f"ignored {self.ignored}", file=sys.stderr)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connect", required=True, help="HOST:PORT of the agent's device listener")
    p.add_argument("--id", required=True, help="device id (1..=32 bytes UTF-8, no NUL)")
    p.add_argument("--sensors", type=int, required=True, help="sensors s0..s{N-1} (0..=16)")
    p.add_argument("--interval-ms", type=int, required=True, help="sampling interval of each")
    p.add_argument("--duration-s", type=float, required=True, help="sampling time")
    p.add_argument("--report", required=True, help="JSON report file")
    p.add_argument("--seed", type=int, default=None, help="seed of the boot id and the jitter")
    p.add_argument("--drain-timeout-s", type=float, default=30.0,
                   help="how long to wait for the last acks after sampling stops")
    p.add_argument("--ring-capacity", type=int, default=RING_CAPACITY,
                   help="samples the RAM ring holds unacked before dropping the oldest")
    args = p.parse_args(argv)
    raw = args.id.encode("utf-8")
    if not 1 <= len(raw) <= 32 or b"\0" in raw:
        p.error("--id must be 1..=32 bytes of UTF-8 without NUL")
    if not 0 <= args.sensors <= 16:
        p.error("--sensors must be 0..=16")
    if not MIN_INTERVAL_MS <= args.interval_ms <= MAX_INTERVAL_MS:
        p.error(f"--interval-ms must be {MIN_INTERVAL_MS}..={MAX_INTERVAL_MS}")
    if args.ring_capacity < 1:
        p.error("--ring-capacity must be at least 1")
    if ":" not in args.connect:
        p.error("--connect must be HOST:PORT")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = Device(args)

    def on_term(_signum, _frame):
        device.terminate = True

    signal.signal(signal.SIGTERM, on_term)
    device.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
