"""Drives scripts/profile-sidecar.sh: warm-up, zero the counters, the
measured requests on one keep-alive connection, then the per-request
figure."""
import glob
import http.client
import json
import os
import subprocess
import sys
import time

port, nonstream, stream, tool, vpid, out, what = sys.argv[1:8]
port, nonstream, stream, vpid = int(port), int(nonstream), int(stream), int(vpid)
CHAT = b'{"model":"bench","messages":[{"role":"user","content":"Say hello to the benchmark, please."}],"max_tokens":16}'
STREAM = b'{"model":"bench","stream":true,"messages":[{"role":"user","content":"Say hello to the benchmark, please."}],"max_tokens":16}'


def connect():
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("POST", "/v1/chat/completions", CHAT, {"content-type": "application/json"})
            r = c.getresponse()
            r.read()
            if r.status == 200:
                return c
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("the gateway did not answer")


def call(c, body):
    c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    r = c.getresponse()
    data = r.read()
    assert r.status == 200, (r.status, data[:200])
    return data


c = connect()
for _ in range(100):
    call(c, CHAT)
    call(c, STREAM)


if tool == "callgrind":
    subprocess.run(["callgrind_control", "-z", str(vpid)], check=True, capture_output=True)
    t0 = time.time()
    for _ in range(nonstream):
        call(c, CHAT)
    for _ in range(stream):
        call(c, STREAM)
    subprocess.run(["callgrind_control", "-d", str(vpid)], check=True, capture_output=True)
    time.sleep(0.5)
    dumps = sorted(glob.glob(f"{out}/{what}.callgrind.{vpid}*"), key=os.path.getmtime)
    last = dumps[-1]
    total = 0
    with open(last) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
    n = nonstream + stream
    print(f"{what}: {total} instructions over {n} requests = {total / n / 1000:.1f} k per request ({last})")
else:
    # dhat: totals for the whole process; run twice (with and without the
    # measured requests) and subtract to get the per-request figure.
    for _ in range(nonstream):
        call(c, CHAT)
    for _ in range(stream):
        call(c, STREAM)
    c.close()
    os.kill(vpid, 15)
    for _ in range(300):
        if os.path.exists(f"{out}/{what}.dhat.json"):
            break
        time.sleep(0.1)
    time.sleep(1)
    with open(f"{out}/{what}.dhat.json") as f:
        d = json.load(f)
    blocks = sum(p["tbk"] for p in d["pps"])
    byts = sum(p["tb"] for p in d["pps"])
    print(f"{what}: {blocks} allocations, {byts} bytes in total (start-up, 201 warm-up requests, then {nonstream} non-stream + {stream} stream)")
