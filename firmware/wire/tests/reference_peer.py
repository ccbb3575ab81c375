#!/usr/bin/env python3
"""Independent implementation of the Ferry device link, written from PROTOCOL.md only.

A second opinion for the wire tests: an encoder and a decoder (framing, COBS, CRC, every message,
every limit) that share nothing with the Rust crate. Run without arguments, it reads the hex blocks
of PROTOCOL.md section 8 and prints one line per finding:

    encode NAME HEX      this encoder's frame for the vector's fields (positive and negative vectors)
    accept NAME          this decoder accepts a ```hex golden=NAME block
    reject NAME REASON   this decoder rejects a ```hex rejected=NAME block, for REASON

It exits 1 (details on stderr) if its own results disagree with the document: a frame that differs
from the block, a golden block it rejects, or a rejected block it accepts or rejects for another
reason than the block's `reason=`. `golden.rs` runs it and checks every line against the Rust side.
With NAME arguments it only prints `NAME HEX` for those vectors. Standard library only.
"""
import os
import re
import struct
import sys
import zlib

# ---------------------------------------------------------------- encoding (sections 1 and 2)


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def text(s):
    b = s.encode("utf-8")
    return varint(len(b)) + b


def f32(x):
    return struct.pack("<f", x)


def f32_bits(bits):
    return struct.pack("<I", bits)


def cobs(data):
    out = bytearray([0])
    code_at, code = 0, 1
    for b in data:
        if b == 0:
            out[code_at] = code
            code_at, code = len(out), 1
            out.append(0)
        else:
            out.append(b)
            code += 1
            if code == 0xFF:
                out[code_at] = code
                code_at, code = len(out), 1
                out.append(0)
    out[code_at] = code
    return bytes(out)


def body_of(message):
    body = bytes([1]) + message
    return body + struct.pack("<I", zlib.crc32(body))


def frame(message):
    return b"\x00" + cobs(body_of(message)) + b"\x00"


def hello(device_id, firmware, boot_id, tick_hz, ticks, next_seq, sensors):
    out = varint(0) + text(device_id) + text(firmware) + varint(boot_id) + varint(tick_hz)
    out += varint(ticks) + varint(next_seq) + varint(len(sensors))
    for index, name, unit, interval_ms in sensors:
        out += bytes([index]) + text(name) + text(unit) + varint(interval_ms)
    return out


def samples(oldest, first_seq, items):
    """items: (ticks, sensor, value bytes)."""
    out = varint(1) + varint(oldest) + varint(first_seq) + varint(len(items))
    for ticks, sensor, value in items:
        out += varint(ticks) + bytes([sensor]) + value
    return out


def heartbeat(ticks, dropped, ring_depth, read_errors):
    return varint(2) + varint(ticks) + varint(dropped) + varint(ring_depth) + varint(read_errors)


def command_result(command_id, status, data=b""):
    """status: 0 Ok, 1 UnknownSensor, 2 InvalidArgument, 3 Unsupported, 4 Failed."""
    return varint(3) + varint(command_id) + varint(status) + varint(len(data)) + bytes(data)


# Messages of the ```hex golden=NAME blocks, field by field as section 8 describes them.
GOLDEN = {
    "hello": hello("dev-01", "1.0.0", 0x12345678, 1000, 1500, 0,
                   [(0, "temperature", "°C", 1000), (1, "humidity", "%", 2000)]),
    "samples": samples(40, 42, [(123456, 0, f32(21.5)), (123456, 1, f32(40.25))]),
    "heartbeat": heartbeat(200000, 3, 17, 0),
    "command_result": command_result(7, 0, b"\x01\x02"),
    "welcome": varint(4) + varint(0x12345678) + varint(1767225600000) + varint(40),
    "ack": varint(5) + varint(0x12345678) + varint(300),
    "command_set_interval": varint(6) + varint(7) + varint(0) + bytes([2]) + varint(250),
    "command_identify": varint(6) + varint(8) + varint(1) + varint(5000),
    "command_reboot": varint(6) + varint(9) + varint(2),
    "command_opaque": varint(6) + varint(10) + varint(3) + varint(3) + b"\x00\xff\x10",
    "hello_request": varint(7),
    "samples_last_seq": samples(0xFFFFFFFE, 0xFFFFFFFE, [(5000, 0, f32(1.5))]),
    "ack_last_seq": varint(5) + varint(0x12345678) + varint(0xFFFFFFFF),
    "samples_non_finite": samples(7, 7, [
        (1000, 0, f32_bits(0x7FC00000)),  # NaN
        (1000, 1, f32_bits(0xFFC00001)),  # NaN, sign and payload bits set
        (2000, 0, f32_bits(0x7F800000)),  # +Inf
        (2000, 1, f32_bits(0xFF800000)),  # -Inf
        (3000, 0, f32_bits(0x80000000)),  # -0.0
    ]),
    "samples_unknown_sensor": samples(0, 0, [(1000, 9, f32(3.25))]),
    "samples_cobs_254": samples(96, 100, [(15300 + 100 * i, 1, f32(21.1)) for i in range(32)]),
}

# Frames of the ```hex rejected=NAME blocks.
REJECTED = {
    "cobs_trailing_ff": frame(GOLDEN["samples_cobs_254"])[:-2] + b"\x00",
    "samples_seq_ffffffff": frame(samples(0xFFFFFFFE, 0xFFFFFFFE,
                                          [(5000, 0, f32(1.5)), (5001, 0, f32(1.5))])),
    "samples_oldest_after_first": frame(samples(43, 42, [(123456, 0, f32(21.5))])),
    "hello_tick_hz_zero": frame(hello("dev-01", "1.0.0", 0x12345678, 0, 1500, 0, [])),
    "hello_nul_in_device_id": frame(hello("dev\x0001", "1.0.0", 0x12345678, 1000, 1500, 0, [])),
}

# ---------------------------------------------------------------- decoding (section 1 and 2)

MAX_FRAME = 1024
MAX_BODY = 1016
LAST_SEQ = 0xFFFFFFFE


class Malformed(Exception):
    pass


def cobs_decode(block):
    """Section 1, COBS; None if invalid or not the canonical encoding."""
    out = bytearray()
    i = 0
    while i < len(block):
        code = block[i]
        if code == 0 or i + code > len(block):
            return None
        out += block[i + 1:i + code]
        i += code
        if code == 0xFF and i == len(block):
            return None  # the last group is never a 0xFF group (the encoder ends with `01`)
        if code != 0xFF and i < len(block):
            out.append(0)
    return bytes(out)


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def byte(self):
        if self.pos >= len(self.data):
            raise Malformed("truncated")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self, bits):
        value, shift, start = 0, 0, self.pos
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
            if shift >= bits + 7:
                raise Malformed("varint too long")
        if value >= 1 << bits:
            raise Malformed("varint out of range")
        if self.pos - start > 1 and self.data[self.pos - 1] == 0:
            raise Malformed("varint not in its shortest form")
        return value

    def take(self, n):
        if self.pos + n > len(self.data):
            raise Malformed("truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def f32(self):
        return self.take(4)  # any bit pattern is a reading: NaN, ±Inf and -0.0 included

    def bytes(self, limit):
        n = self.varint(32)
        if n > limit:
            raise Malformed("too many bytes")
        return self.take(n)

    def text(self, lo, hi):
        raw = self.bytes(hi)
        if len(raw) < lo:
            raise Malformed("string too short")
        if 0 in raw:
            raise Malformed("NUL in a string")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed("not UTF-8")


def parse_message(data):
    r = Reader(data)
    tag = r.varint(32)
    if tag == 0:  # Hello
        msg = ("hello", r.text(1, 32), r.text(0, 32), r.varint(32))
        tick_hz = r.varint(32)
        if tick_hz == 0:
            raise Malformed("tick_hz 0")
        r.varint(64)  # ticks
        r.varint(32)  # next_seq
        n = r.varint(32)
        if n > 16:
            raise Malformed("too many sensors")
        seen = set()
        for _ in range(n):
            index = r.byte()
            if index in seen:
                raise Malformed("sensor index repeated")
            seen.add(index)
            r.text(0, 24)
            r.text(0, 12)
            r.varint(32)
    elif tag == 1:  # Samples
        oldest, first_seq, n = r.varint(32), r.varint(32), r.varint(32)
        if not 1 <= n <= 32:
            raise Malformed("sample count")
        if oldest > first_seq:
            raise Malformed("oldest > first_seq")
        if first_seq + n - 1 > LAST_SEQ:
            raise Malformed("seq beyond the last usable one")
        values = []
        for _ in range(n):
            r.varint(64)
            r.byte()
            values.append(r.f32())
        msg = ("samples", oldest, first_seq, values)
    elif tag == 2:  # Heartbeat
        msg = ("heartbeat", r.varint(64), r.varint(32), r.varint(16), r.varint(32))
    elif tag == 3:  # CommandResult
        msg = ("command_result", r.varint(32))
        if r.varint(32) > 4:
            raise Malformed("status")
        r.bytes(128)
    elif tag == 4:  # Welcome
        msg = ("welcome", r.varint(32), r.varint(64), r.varint(32))
    elif tag == 5:  # Ack
        msg = ("ack", r.varint(32), r.varint(32))
    elif tag == 6:  # Command: ("command", id, kind, fields...)
        command_id = r.varint(32)
        kind = r.varint(32)
        if kind == 0:  # SetInterval
            msg = ("command", command_id, kind, r.byte(), r.varint(32))
        elif kind == 1:  # Identify
            msg = ("command", command_id, kind, r.varint(32))
        elif kind == 2:  # Reboot
            msg = ("command", command_id, kind)
        elif kind == 3:  # Opaque
            msg = ("command", command_id, kind, r.bytes(128))
        else:
            raise Malformed("command kind")
    elif tag == 7:
        msg = ("hello_request",)
    else:
        raise Malformed("message tag")
    if r.pos != len(data):
        raise Malformed("bytes left over")
    return msg


def decode_run(run):
    """One non-empty run between delimiters: ("ok", message) or (reason, None)."""
    if len(run) > MAX_FRAME:
        return "too_long", None
    body = cobs_decode(run)
    if body is None:
        return "bad_cobs", None
    if len(body) < 6:
        return "too_short", None
    if zlib.crc32(body[:-4]) != struct.unpack("<I", body[-4:])[0]:
        return "bad_crc", None
    if body[0] != 1:
        return "unknown_version", None
    if len(body) > MAX_BODY:
        return "malformed", None
    try:
        return "ok", parse_message(body[1:-4])
    except Malformed:
        return "malformed", None


def decode_frame(data):
    runs = [r for r in data.split(b"\x00") if r]
    assert len(runs) == 1, "a vector is one frame"
    return decode_run(runs[0])


# ---------------------------------------------------------------- checking PROTOCOL.md


def spec_blocks(path):
    """(kind, name, reason, bytes) for every hex block of the document."""
    spec = open(path, encoding="utf-8").read()
    pattern = r"```hex (golden|rejected)=(\S+)(?: reason=(\S+))?\n(.*?)```"
    for kind, name, reason, hexes in re.findall(pattern, spec, re.S):
        yield kind, name, reason, bytes.fromhex(hexes.replace("\n", " "))


def main():
    if len(sys.argv) > 1:
        for name in sys.argv[1:]:
            f = frame(GOLDEN[name]) if name in GOLDEN else REJECTED[name]
            print(name, f.hex(" "))
        return 0
    spec = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "PROTOCOL.md")
    errors = []
    for kind, name, reason, block in spec_blocks(spec):
        mine = frame(GOLDEN[name]) if kind == "golden" else REJECTED[name]
        print("encode", name, mine.hex(" "))
        if mine != block:
            errors.append(f"{name}: the document's bytes differ from this encoder's")
        got, msg = decode_frame(block)
        if kind == "golden":
            if got != "ok":
                errors.append(f"{name}: rejected as {got}")
                continue
            print("accept", name)
        else:
            print("reject", name, got)
            if got != reason:
                errors.append(f"{name}: {got}, the document says {reason}")
    for e in errors:
        print(e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
