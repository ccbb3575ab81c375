#!/usr/bin/env python3
"""Memory and lifetime of half-open API connections on a `ferry` process.

    python3 agent/benches/half_open.py target/release/ferry

Starts the given `ferry` on a fresh store, opens 500 connections to its API (half send nothing,
half an unfinished request head), and prints the agent's RSS before, with them open, once the
server has closed them (or 30 s passed), after the client side closed too, and with a second wave
of 500 open (freed memory is reused, not added to).
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

N = 500


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def main(binary):
    d = tempfile.mkdtemp(prefix="ferry-half-open.")
    api, dev = free_port(), free_port()
    with open(f"{d}/ferry.toml", "w") as f:
        f.write(
            f'[gateway]\nid = "half-open"\n[store]\npath = "{d}/ferry.db"\n'
            f'[devices]\ntcp_listen = "127.0.0.1:{dev}"\n[api]\nlisten = "127.0.0.1:{api}"\n'
        )
    p = subprocess.Popen([binary, "--log", "error", "run", "--config", f"{d}/ferry.toml"])

    def rss():
        with open(f"/proc/{p.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1])

    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", api)).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(2)
        before = rss()
        conns = []
        for i in range(N):
            s = socket.create_connection(("127.0.0.1", api))
            if i % 2:
                s.send(b"GET /api/v1/devices HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            conns.append(s)
        opened = time.time()
        time.sleep(3)
        with_open = rss()
        closed = 0
        for s in conns:
            s.settimeout(max(0.01, 30 - (time.time() - opened)))
            try:
                if s.recv(1) == b"":
                    closed += 1
            except socket.timeout:
                pass
            except OSError:
                closed += 1
        waited = time.time() - opened
        after_server = rss()
        for s in conns:
            s.close()
        time.sleep(3)
        after_client = rss()
        conns = [socket.create_connection(("127.0.0.1", api)) for _ in range(N)]
        time.sleep(3)
        second = rss()
        for s in conns:
            s.close()
        print(f"RSS before:                           {before} KiB")
        print(f"RSS with {N} half-open connections:   {with_open} KiB")
        print(f"closed by the server:                 {closed} of {N} within {waited:.1f} s of opening")
        print(f"RSS then:                             {after_server} KiB")
        print(f"RSS 3 s after the client closed them: {after_client} KiB")
        print(f"RSS with a second wave of {N}:         {second} KiB")
    finally:
        p.terminate()
        p.wait()


if __name__ == "__main__":
    main(os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else "target/release/ferry")
