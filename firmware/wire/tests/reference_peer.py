#!/usr/bin/env python3
"""Independent implementation of the Ferry device link, written from PROTOCOL.md only.

A second opinion for the wire tests: an encoder and a decoder (framing, COBS, CRC, every message,
every limit) that share nothing with the Rust crate, and an Ed25519 (RFC 8032) signer and verifier
for the firmware update's signed message. Run without arguments, it reads the hex blocks of
PROTOCOL.md sections 8 and 9 and prints one line per finding:

    encode NAME HEX      this encoder's frame for the vector's fields (positive and negative vectors)
    accept NAME          this decoder accepts a ```hex golden=NAME block
    reject NAME REASON   this decoder rejects a ```hex rejected=NAME block, for REASON
    check signature      section 9.6: the image's SHA-256, the signed message and the signature
                         (made here from the secret key) are the document's, and verify

It exits 1 (details on stderr) if its own results disagree with the document: a frame that differs
from the block, a golden block it rejects, or a rejected block it accepts or rejects for another
reason than the block's `reason=`. `golden.rs` runs it and checks every line against the Rust side.
With NAME arguments it only prints `NAME HEX` for those vectors. Standard library only.
"""
import hashlib
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


UPDATE_STATES = ["idle", "receiving", "rebooting", "trial", "done", "failed"]
UPDATE_ERRORS = ["none", "busy", "bad_slot", "too_big", "wrong_board", "not_newer", "bad_version",
                 "bad_hash", "bad_signature", "flash", "rolled_back", "aborted", "unknown_id",
                 "incomplete"]


def update_status(update_id, state, offset, error, max_chunk, window):
    return (varint(8) + varint(update_id) + varint(UPDATE_STATES.index(state)) + varint(offset)
            + varint(UPDATE_ERRORS.index(error)) + varint(max_chunk) + varint(window))


def blob(data):
    return varint(len(data)) + bytes(data)


def update_begin(update_id, slot, length, version, board, sha256, signature, force):
    return (varint(9) + varint(update_id) + bytes([slot]) + varint(length) + text(version)
            + text(board) + blob(sha256) + blob(signature) + bytes([1 if force else 0]))


def update_chunk(update_id, offset, data):
    return varint(10) + varint(update_id) + varint(offset) + blob(data)


# Section 9.6's example image and its signed message (section 9.4).
EXAMPLE_IMAGE = bytes(i % 251 for i in range(65536))
EXAMPLE_SHA = hashlib.sha256(EXAMPLE_IMAGE).digest()


def signed_message(length, version, board, sha256):
    v, b = version.encode("utf-8"), board.encode("utf-8")
    return b"ferry-fw-v1\x00" + struct.pack("<I", length) + bytes([len(v)]) + v + bytes([len(b)]) + b + sha256


def spec_hex_after(spec, label):
    at = spec.index(label) + len(label)
    return bytes.fromhex(spec[at:spec.index("`", at)])


# ---------------------------------------------------------------- Ed25519 (RFC 8032 section 5.1)

Q = 2 ** 255 - 19                                   # the field prime
ORDER = 2 ** 252 + 27742317777372353535851937790883648493
CURVE_D = -121665 * pow(121666, Q - 2, Q) % Q
SQRT_M1 = pow(2, (Q - 1) // 4, Q)


def _x_from_y(y, sign):
    if y >= Q:
        return None
    u, v = (y * y - 1) % Q, (CURVE_D * y * y + 1) % Q
    x = u * pow(v, 3, Q) * pow(u * pow(v, 7, Q), (Q - 5) // 8, Q) % Q
    if (v * x * x - u) % Q != 0:
        x = x * SQRT_M1 % Q
        if (v * x * x - u) % Q != 0:
            return None
    if x == 0 and sign:
        return None
    return Q - x if (x & 1) != sign else x


_BY = 4 * pow(5, Q - 2, Q) % Q
BASE = (_x_from_y(_BY, 0), _BY, 1, _x_from_y(_BY, 0) * _BY % Q)   # extended coordinates


def _add(p, q):
    a = (p[1] - p[0]) * (q[1] - q[0]) % Q
    b = (p[1] + p[0]) * (q[1] + q[0]) % Q
    c = 2 * CURVE_D * p[3] * q[3] % Q
    d = 2 * p[2] * q[2] % Q
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % Q, g * h % Q, f * g % Q, e * h % Q)


def _mul(k, p):
    acc = (0, 1, 1, 0)
    while k:
        if k & 1:
            acc = _add(acc, p)
        p = _add(p, p)
        k >>= 1
    return acc


def _same(p, q):
    return (p[0] * q[2] - q[0] * p[2]) % Q == 0 and (p[1] * q[2] - q[1] * p[2]) % Q == 0


def _encode_point(p):
    zi = pow(p[2], Q - 2, Q)
    x, y = p[0] * zi % Q, p[1] * zi % Q
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _decode_point(s):
    y = int.from_bytes(s, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    x = _x_from_y(y, sign)
    return None if x is None else (x, y, 1, x * y % Q)


def _h(*parts):
    return int.from_bytes(hashlib.sha512(b"".join(parts)).digest(), "little") % ORDER


def _expand(secret):
    h = hashlib.sha512(secret).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    return a, h[32:]


def ed25519_public(secret):
    return _encode_point(_mul(_expand(secret)[0], BASE))


def ed25519_sign(secret, message):
    a, prefix = _expand(secret)
    public = _encode_point(_mul(a, BASE))
    r = _h(prefix, message)
    big_r = _encode_point(_mul(r, BASE))
    s = (r + _h(big_r, public, message) * a) % ORDER
    return big_r + s.to_bytes(32, "little")


def ed25519_verify(public, message, signature):
    a, r = _decode_point(public), _decode_point(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= ORDER:
        return False
    k = _h(signature[:32], public, message)
    return _same(_mul(s, BASE), _add(r, _mul(k, a)))


def check_signature(spec):
    """Section 9.6, from the document's own labels; a list of disagreements."""
    errors = []
    secret = spec_hex_after(spec, "secret key: `")
    public = spec_hex_after(spec, "public key: `")
    message = signed_message(len(EXAMPLE_IMAGE), "1.1.0", "microbit", EXAMPLE_SHA)
    signature = ed25519_sign(secret, message)
    if ed25519_public(secret) != public:
        errors.append("9.6: the public key is not the secret key's")
    if spec_hex_after(spec, "SHA-256: `") != EXAMPLE_SHA:
        errors.append("9.6: SHA-256 of the example image differs")
    if spec_hex_after(spec, "signed message: `") != message:
        errors.append("9.6: the signed message differs")
    if spec_hex_after(spec, "signature: `") != signature:
        errors.append("9.6: the signature differs from this signer's")
    if not ed25519_verify(public, message, signature):
        errors.append("9.6: the signature does not verify")
    bad = bytearray(signature)
    bad[5] ^= 1
    if ed25519_verify(public, message, bytes(bad)) or ed25519_verify(public, message + b"x", signature):
        errors.append("9.6: a wrong signature verifies")
    return errors


# Messages of the ```hex golden=NAME blocks, field by field as sections 8 and 9 describe them.
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
    "update_status": update_status(7, "receiving", 1536, "none", 512, 1024),
    "update_status_rolled_back": update_status(7, "failed", 0, "rolled_back", 512, 1024),
    "update_begin": update_begin(7, 1, 65536, "1.1.0", "microbit", EXAMPLE_SHA, ed25519_sign(
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"),
        signed_message(65536, "1.1.0", "microbit", EXAMPLE_SHA)), False),
    "update_chunk": update_chunk(7, 1536, EXAMPLE_IMAGE[1536:1568]),
    "update_commit": varint(11) + varint(7),
    "update_abort": varint(12) + varint(7),
}

# Frames of the ```hex rejected=NAME blocks.
REJECTED = {
    "cobs_trailing_ff": frame(GOLDEN["samples_cobs_254"])[:-2] + b"\x00",
    "samples_seq_ffffffff": frame(samples(0xFFFFFFFE, 0xFFFFFFFE,
                                          [(5000, 0, f32(1.5)), (5001, 0, f32(1.5))])),
    "samples_oldest_after_first": frame(samples(43, 42, [(123456, 0, f32(21.5))])),
    "hello_tick_hz_zero": frame(hello("dev-01", "1.0.0", 0x12345678, 0, 1500, 0, [])),
    "hello_nul_in_device_id": frame(hello("dev\x0001", "1.0.0", 0x12345678, 1000, 1500, 0, [])),
    "update_chunk_empty": frame(update_chunk(7, 1536, b"")),
    "update_begin_short_signature": frame(update_begin(7, 1, 65536, "1.1.0", "microbit",
                                                       b"\x11" * 32, b"\x22" * 63, False)),
    "update_begin_force_2": frame(update_begin(7, 1, 65536, "1.1.0", "microbit",
                                               b"\x11" * 32, b"\x22" * 64, False)[:-1] + b"\x02"),
    "update_status_idle_with_id": frame(update_status(3, "idle", 0, "none", 512, 1024)),
    "update_status_max_chunk_100": frame(update_status(7, "receiving", 0, "none", 100, 1024)),
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
    elif tag == 8:  # UpdateStatus
        update_id, state = r.varint(32), r.varint(32)
        offset, error = r.varint(32), r.varint(32)
        max_chunk, window = r.varint(16), r.varint(16)
        if state >= len(UPDATE_STATES) or error >= len(UPDATE_ERRORS):
            raise Malformed("update state or error")
        if (update_id == 0) != (state == 0):
            raise Malformed("id 0 exactly when idle")
        if not (32 <= max_chunk <= 512 and max_chunk % 32 == 0 and window >= max_chunk):
            raise Malformed("max_chunk or window")
        msg = ("update_status", update_id, UPDATE_STATES[state], offset, UPDATE_ERRORS[error])
    elif tag == 9:  # UpdateBegin
        update_id, slot, length = r.varint(32), r.byte(), r.varint(32)
        version, board = r.text(1, 32), r.text(1, 24)
        sha256, signature = r.bytes(32), r.bytes(64)
        force = r.byte()
        if update_id == 0 or length == 0 or len(sha256) != 32 or len(signature) != 64:
            raise Malformed("update begin fields")
        if force > 1:
            raise Malformed("bool")
        msg = ("update_begin", update_id, slot, length, version, board, force)
    elif tag == 10:  # UpdateChunk
        update_id, offset, chunk = r.varint(32), r.varint(32), r.bytes(512)
        if update_id == 0 or not chunk or offset + len(chunk) > 0xFFFFFFFF:
            raise Malformed("update chunk fields")
        msg = ("update_chunk", update_id, offset, chunk)
    elif tag in (11, 12):  # UpdateCommit, UpdateAbort
        update_id = r.varint(32)
        if update_id == 0:
            raise Malformed("update id 0")
        msg = ("update_commit" if tag == 11 else "update_abort", update_id)
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
    errors = check_signature(open(spec, encoding="utf-8").read())
    if not errors:
        print("check signature")
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
