#!/usr/bin/env python3
"""Independent implementation of the Ferry device link encoding, written from PROTOCOL.md only.

Used by the wire tests as a second opinion: it prints the golden frames, and the Rust test checks
they match both PROTOCOL.md and the Rust encoder byte for byte. Standard library only.
"""
import struct
import sys
import zlib


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


def frame(message):
    body = bytes([1]) + message
    body += struct.pack("<I", zlib.crc32(body))
    return b"\x00" + cobs(body) + b"\x00"


GOLDEN = {
    "hello": varint(0)
    + text("dev-01")
    + text("1.0.0")
    + varint(0x12345678)
    + varint(1000)
    + varint(1500)
    + varint(0)
    + varint(2)
    + bytes([0]) + text("temperature") + text("°C") + varint(1000)
    + bytes([1]) + text("humidity") + text("%") + varint(2000),
    "samples": varint(1)
    + varint(40)
    + varint(42)
    + varint(2)
    + varint(123456) + bytes([0]) + f32(21.5)
    + varint(123456) + bytes([1]) + f32(40.25),
    "heartbeat": varint(2) + varint(200000) + varint(3) + varint(17) + varint(0),
    "command_result": varint(3) + varint(7) + varint(0) + varint(2) + b"\x01\x02",
    "welcome": varint(4) + varint(0x12345678) + varint(1767225600000) + varint(40),
    "ack": varint(5) + varint(0x12345678) + varint(300),
    "command_set_interval": varint(6) + varint(7) + varint(0) + bytes([2]) + varint(250),
    "command_identify": varint(6) + varint(8) + varint(1) + varint(5000),
    "command_reboot": varint(6) + varint(9) + varint(2),
    "command_opaque": varint(6) + varint(10) + varint(3) + varint(3) + b"\x00\xff\x10",
    "hello_request": varint(7),
}

if __name__ == "__main__":
    names = sys.argv[1:] or list(GOLDEN)
    for name in names:
        print(name, frame(GOLDEN[name]).hex(" "))
