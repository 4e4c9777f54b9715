#!/usr/bin/env python3
"""Distinct 64-byte code lines a profiled window ran, from a callgrind file
written with `--dump-instr=yes` (`DUMP_INSTR=yes scripts/profile-sidecar.sh`).

    scripts/code-lines.py FILE [TOP]

Prints the total, the objects they belong to, and the TOP functions
(default 20) with the most lines. At low rates and on a busy machine a
request's cost follows the cache lines it must fetch more than the
instructions it runs (tests/LOADBENCH.md, "Five runs with turns"): this is
that footprint, counted without noise. The window is the requests after
the warm-up, so the count is of lines any of them ran (a request's own
footprint when they all take the same path).
"""
import collections
import re
import sys

NAMED = re.compile(r"\((\d+)\)(?: (.*))?")


def parse(path):
    by_object = collections.defaultdict(set)
    by_function = collections.defaultdict(set)
    names = {}

    def name(kind, token):
        # Callgrind compresses repeated names: "(7) name" once, then "(7)".
        m = NAMED.match(token)
        if not m:
            return token
        if m.group(2):
            names[(kind, m.group(1))] = m.group(2)
        return names.get((kind, m.group(1)), token)

    obj = fn = None
    addr = 0
    for raw in open(path, errors="replace"):
        line = raw.rstrip("\n")
        if line.startswith("ob="):
            obj = name("ob", line[3:])
        elif line.startswith("fn="):
            fn = name("fn", line[3:])
        elif line.startswith("cob="):
            name("ob", line[4:])
        elif line.startswith("cfn="):
            name("fn", line[4:])
        elif line and line[0] in "0123456789+-*":
            parts = line.split()
            pos = parts[0]
            if pos.startswith("0x"):
                addr = int(pos, 16)
            elif pos[0] in "+-":
                delta = int(pos[1:], 16) if pos[1:].startswith("0x") else int(pos[1:])
                addr += delta if pos[0] == "+" else -delta
            elif pos != "*":
                try:
                    addr = int(pos)
                except ValueError:
                    continue
            # A cost line with a non-zero first event (Ir) ran there.
            if len(parts) > 2 and parts[2] != "0":
                by_object[obj].add(addr >> 6)
                by_function[fn].add(addr >> 6)
    return by_object, by_function


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    by_object, by_function = parse(sys.argv[1])
    total = sum(len(v) for v in by_object.values())
    print(f"distinct 64-byte code lines run: {total} ({total * 64 / 1024:.0f} KiB)")
    for obj, lines in sorted(by_object.items(), key=lambda kv: -len(kv[1]))[:6]:
        print(f"  {len(lines):6d}  {obj}")
    print("functions with the most lines:")
    for fn, lines in sorted(by_function.items(), key=lambda kv: -len(kv[1]))[:top]:
        print(f"  {len(lines):6d}  {fn[:140]}")


if __name__ == "__main__":
    main()
