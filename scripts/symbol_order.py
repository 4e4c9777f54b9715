"""The functions a callgrind profile (taken with --dump-instr=yes) ran in
one binary, hottest first, by their link names: a symbol ordering file
for lld (`--symbol-ordering-file`). Also prints how many 64-byte lines
and 4 KiB pages of that binary's code the profile ran.

    python3 scripts/symbol_order.py PROFILE BINARY OUTPUT
"""
import bisect
import collections
import os
import re
import subprocess
import sys

profile, binary, output = sys.argv[1:4]

# Function symbols by start address (`nm -n`: sorted, link names).
starts, names = [], []
nm = subprocess.run(["nm", "-n", "--defined-only", binary], check=True, capture_output=True, text=True)
for line in nm.stdout.splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1] in "tTwW":
        starts.append(int(parts[0], 16))
        names.append(parts[2])

# Self cost per address of `binary`: the line after `calls=` carries the
# callee's inclusive cost and is skipped, so a caller is not ranked by
# what its callees ran. Addresses are written absolute (0x…), relative
# (+n, -n) or repeated (*).
base = os.path.basename(binary)
objects, obj, addr, after_call = {}, None, 0, False
columns = 2  # `positions: instr line`; the cost follows the positions
cost = collections.Counter()
with open(profile, errors="replace") as f:
    for raw in f:
        if raw.startswith("positions:"):
            columns = len(raw.split()) - 1
            continue
        if raw.startswith(("ob=", "cob=")):
            m = re.match(r"c?ob=\((\d+)\)(?: (.*))?", raw.rstrip("\n"))
            if m and m.group(2):
                objects[m.group(1)] = m.group(2)
            if raw.startswith("ob=") and m:
                obj = objects.get(m.group(1), "")
            continue
        if raw.startswith("calls="):
            after_call = True
            continue
        if not raw or raw[0] not in "0123456789+-*":
            continue
        fields = raw.split()
        pos = fields[0]
        if pos.startswith("0x"):
            addr = int(pos, 16)
        elif pos[0] in "+-":
            step = int(pos[1:], 16) if pos[1:].startswith("0x") else int(pos[1:])
            addr = addr + step if pos[0] == "+" else addr - step
        elif pos != "*":
            addr = int(pos)
        skip, after_call = after_call, False
        if skip or not obj or os.path.basename(obj) != base or len(fields) <= columns:
            continue
        if fields[columns].isdigit() and fields[columns] != "0":
            cost[addr] += int(fields[columns])

by_symbol = collections.Counter()
for a, c in cost.items():
    i = bisect.bisect_right(starts, a) - 1
    if i >= 0:
        by_symbol[names[i]] += c
with open(output, "w") as out:
    for name, _ in by_symbol.most_common():
        out.write(name + "\n")
lines = {a >> 6 for a in cost}
pages = {a >> 12 for a in cost}
print(f"{len(by_symbol)} functions ran: {len(lines)} code lines of 64 bytes on {len(pages)} pages of 4 KiB")
