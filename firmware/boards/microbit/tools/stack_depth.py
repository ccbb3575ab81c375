#!/usr/bin/env python3
"""Worst-case stack depth of a Thumb (Cortex-M0) image, from its disassembly.

    llvm-objdump -d -C --no-show-raw-insn IMAGE.elf > image.asm
    tools/stack_depth.py image.asm [FUNCTION_SUBSTRING]   (default: __cortex_m_rt_main)

Prints the deepest call chain below each function whose name contains FUNCTION_SUBSTRING, with
every frame's size. A frame is what the prologue (its first 16 instructions) reserves: the
registers pushed, `sub sp, #n`, and `ldr rX, [pc, ...]; add sp, rX` with a negative literal
(frames over 508 bytes). Calls are `bl` targets. Not followed: indirect calls (`blx rX`) and
recursion (a function already on the chain); the firmware has neither on its deep paths, so the
figure is an upper bound for them. Standard library only.
"""
import functools
import re
import sys


def parse(lines):
    words = {}
    for line in lines:
        m = re.match(r"\s*([0-9a-f]+):\s+(?:[0-9a-f]{2}\s+){4}\.word\s+0x([0-9a-f]+)", line)
        if m:
            words[int(m.group(1), 16)] = int(m.group(2), 16)
    fns = {}
    cur = None
    for line in lines:
        m = re.match(r"^([0-9a-f]+) <(.*)>:$", line)
        if m and not m.group(2).startswith("$"):  # $t/$d are mapping symbols, not functions
            cur = {"frame": 0, "calls": set(), "n": 0, "regs": {}}
            fns[m.group(2)] = cur
            continue
        if cur is None:
            continue
        cur["n"] += 1
        m = re.search(r"\tbl\t0x[0-9a-f]+ <([^>+]*)>", line)
        if m:
            cur["calls"].add(m.group(1))
        if cur["n"] > 16:
            continue
        m = re.search(r"\tpush\t\{(.*)\}", line)
        if m:
            cur["frame"] += 4 * len(m.group(1).split(","))
        m = re.search(r"\tsub\tsp, #(\d+)", line)
        if m:
            cur["frame"] += int(m.group(1))
        m = re.search(r"\tldr\tr(\d+), \[pc, #\d+\]\s+@ 0x([0-9a-f]+)", line)
        if m:
            cur["regs"][m.group(1)] = words.get(int(m.group(2), 16))
        m = re.search(r"\tadd\tsp, r(\d+)\s*$", line)
        if m and cur["regs"].get(m.group(1)) is not None:
            value = cur["regs"][m.group(1)]
            if value >= 0x8000_0000:
                cur["frame"] += 0x1_0000_0000 - value
    return fns


def main():
    lines = open(sys.argv[1]).read().splitlines()
    root = sys.argv[2] if len(sys.argv) > 2 else "__cortex_m_rt_main"
    fns = parse(lines)
    sys.setrecursionlimit(10_000)

    @functools.lru_cache(None)
    def depth(name, chain):
        f = fns.get(name)
        if f is None:
            return 0, ()
        best = (0, ())
        for callee in f["calls"]:
            if callee == name or callee in chain:
                continue
            d = depth(callee, chain + (name,))
            if d[0] > best[0]:
                best = d
        return f["frame"] + best[0], ((f["frame"], name),) + best[1]

    for name in [n for n in fns if root in n]:
        total, chain = depth(name, ())
        print(f"{total} bytes below {name}")
        for frame, fn in chain:
            print(f"  {frame:6}  {fn[:120]}")


if __name__ == "__main__":
    main()
