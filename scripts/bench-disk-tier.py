#!/usr/bin/env python3
"""The disk tier's restore time against recomputing: a long prompt (about 33k
tokens) prefilled on a cold `heed serve --cache-dir`, the server stopped (its
cached blocks go to disk), restarted, and the same prompt sent again, with the
page cache warm and then dropped (root only; skipped otherwise).

  scripts/bench-disk-tier.py build/heed MODEL.gguf [--entries 1900] [--port 18191]

A benchmark, not a test: it prints seconds. Loopback only; the folder is a
temporary one, removed at the end."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("heed")
    ap.add_argument("model")
    ap.add_argument("--entries", type=int, default=1900, help="sentences of the prompt (1900: ~33k Gemma tokens)")
    ap.add_argument("--port", type=int, default=18191)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="heed_disk_bench_")
    args = [a.heed, "serve", a.model, "--host", "127.0.0.1", "--port", str(a.port), "--threads", "2", "--slots", "1",
            "--ctx", str(a.entries * 18 + 1024), "--cache-entries", "1", "--cache-dir", d, "--draft", "none"]
    words = ["harbor", "lantern", "crane", "ferry", "anchor", "signal", "bridge", "market", "quiet", "rusty"]
    text = " ".join(f"Entry {i}: the {words[i % 10]} near the {words[i * 3 % 10]} was seen {i % 7 + 2} times."
                    for i in range(a.entries))
    body = json.dumps({"model": "x", "messages": [{"role": "user", "content": text}], "max_tokens": 1,
                       "temperature": 0}).encode()

    def start():
        p = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        for line in p.stderr:
            if b"ready" in line:
                return p
        raise SystemExit(f"heed serve exited with {p.wait()}")

    def ask():
        t = time.monotonic()
        req = urllib.request.Request(f"http://127.0.0.1:{a.port}/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
        j = json.load(urllib.request.urlopen(req, timeout=7200))
        return time.monotonic() - t, j["usage"]["prompt_tokens"], j["heed_cache"]

    def stop(p):
        p.send_signal(signal.SIGTERM)
        p.wait()

    try:
        p = start()
        dt, n, c = ask()
        print(f"cold: {n} prompt tokens in {dt:.2f} s ({c['recomputed']} recomputed)", flush=True)
        stop(p)
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
        print(f"disk: {size / 2**20:.0f} MiB", flush=True)
        for mode in ("page cache warm", "page cache dropped"):
            if mode.endswith("dropped"):
                try:
                    subprocess.run(["sync"], check=False)
                    with open("/proc/sys/vm/drop_caches", "w") as f:
                        f.write("3\n")
                except OSError as e:
                    print(f"{mode}: skipped ({e})")
                    continue
            p = start()
            dt, n, c = ask()
            print(f"restart, {mode}: {dt:.2f} s, {c['restored']} restored, {c['recomputed']} recomputed", flush=True)
            stop(p)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
