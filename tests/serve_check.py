#!/usr/bin/env python3
"""tests/serve_check.py - `heed serve` from the outside, as its clients see it.

    serve_check.py HEED_CLI

Starts `heed serve` on Gemma 3 270M (port 0, --threads 2) and talks to it with
the `openai` and `anthropic` SDKs and with raw HTTP (http.client, sockets):
  basics        /health, /v1/models, /tokenize and /detokenize round trip
  openai SDK    chat (usage adds up, finish_reason), the same request streamed
                with include_usage (same text, one usage chunk, [DONE]), stop
                strings (the output is the greedy output cut before the stop),
                logprobs with top_logprobs (token texts make the content, top
                lists sorted, greedy token on top), legacy completions, models
  anthropic SDK messages with system as a string and as blocks, streamed (the SSE
                event order, the same text and usage), stop_sequences,
                count_tokens against usage, cache_control blocks accepted
  errors        wrong key (401) and bad max_tokens (400) through both SDKs; raw
                bad bodies (malformed JSON, wrong types, unknown role, empty
                messages, invalid UTF-8, max_tokens <= 0, a prompt over --ctx,
                unknown path, missing/wrong key) each a 4xx JSON in its API's
                error shape naming the bad field, the server healthy after each;
                bodies over --max-body (2 MB, and 100 MB announced) -> 413 or
                an early close; a client that stalls mid-request or stays idle
                is cut within --timeout + 10 s while others are served
  concurrency   16 greedy requests at once (8 with HEED_SERVE_LIGHT=1, as the
                sanitizer builds set) equal the same requests run one by one;
                /metrics counters move by exactly what was asked and made,
                nothing left running or queued, histograms well formed
  prefix cache  the same request again reads len(prompt) - 1 tokens from the
                cache (OpenAI cached_tokens, Anthropic cache_read_input_tokens);
                a longer conversation reads at least the shared prefix, and its
                output equals the same request on a cold server
  cache report  every response's heed_cache object (body, last stream event,
                Anthropic's message_delta) and x-heed-cache header: counts that
                add up, a planted divergence named by token index and text and
                traced to the request that made the match; a hint when a long
                prompt's first line changes
  cancellation  a stream whose client hangs up stops running, the KV blocks
                of what it generated are given back, its prompt stays cached
                (sent again, it reads all but one token from the cache), and
                the server goes on serving
  strict model  --strict-model: an unknown model is a 404 in both error shapes
  rate limit    --slots 1 --queue 1 and 8 requests at once: the overflow gets
                429 with Retry-After, the rest 200
  long waits    --timeout 1 --slots 1: a stream queued behind a long request
                longer than the idle timeout gets keep-alives (an SSE comment;
                Anthropic's ping) and its whole answer, and a non-streaming
                request running past the timeout is not cut
  tenants       two API keys: a prompt cached under one is not reused under
                the other; GET /v1/cache lists only the caller's entries
  sessions      --cache-entries 4: side requests without a session force
                evictions; a prompt sent with X-Session-Id is never evicted by
                them and is reused whole; the same without a session is evicted
  chunk reuse   header x-heed-cache-reuse: chunks: a prompt whose system line
                changed at token ~20 reuses, after it, everything but the
                boundary tokens and the last token (exact counts from
                /tokenize); with off, nothing after it; a bad value is a 400
  disk tier     --cache-dir, --cache-entries 1: a prompt evicted from memory
                is read back from disk (heed_cache.restored, whole blocks),
                and every cached prompt after a restart; the output equals
                the cold one's; a foreign file is deleted at start, a file
                with a flipped byte at its read, and neither is used; a folder
                that cannot be made gives a warning and a server that serves
  tool calls    (Qwen 2.5 Coder 1.5B; HEED_SERVE_QWEN=0 skips it) a tool call
                through OpenAI chat (plain and streamed) and Anthropic messages,
                and the tool result sent back
  shutdown      SIGTERM stops every server with exit code 0 within 20 s
Models come from $HEED_MODELS (default ~/.cache/heed/models). Exits 0, 1 on a
failure (every check runs; a summary lists the failures), 77 when the Gemma
model is absent.
"""
import http.client
import itertools
import json
import os
import queue
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
from collections import deque

import anthropic
import openai

MODELS = os.path.expanduser(os.environ.get("HEED_MODELS", "~/.cache/heed/models"))
GEMMA = "gemma-3-270m-q4_k_m.gguf"
QWEN = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
KEY = "sekrit"
CTX = 2048
TIMEOUT_S = 5  # the main server's --timeout
ANTHROPIC_VERSION = "2023-06-01"
# The anthropic SDK here has no temperature argument: it goes in the body as extra_body.
GREEDY = {"temperature": 0}
# HEED_SERVE_LIGHT=1 (the sanitizer builds): 8 concurrent clients instead of 16, and a 100-token
# request to wait behind instead of 300; ASan's own slowness keeps every wait past the timeouts.
LIGHT = os.environ.get("HEED_SERVE_LIGHT") == "1"
# The error "type" of each status, in both APIs' error shapes.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "request_too_large", 429: "rate_limit_error"}
METRIC_NAMES = ["heed_requests_total", "heed_prompt_tokens_total", "heed_generated_tokens_total",
                "heed_cached_prompt_tokens_total", "heed_queue_depth", "heed_running_sequences",
                "heed_kv_blocks_used", "heed_kv_blocks_free", "heed_cache_sequences", "heed_draft_tokens_total",
                "heed_draft_accepted_total"]
HISTOGRAMS = ["heed_time_to_first_token_seconds", "heed_time_per_output_token_seconds"]
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"

# ---------- checks ----------

FAILURES = []            # (test, message)
_current = {"test": ""}


class Skip(Exception):
    """A test that cannot run here (says why)."""


def check(cond, msg):
    """Records a failure instead of raising, so that every check runs."""
    if not cond:
        FAILURES.append((_current["test"], msg))
        print(f"  FAIL: {msg}", flush=True)
    return bool(cond)


def run_test(name, fn, *args):
    _current["test"] = name
    before = len(FAILURES)
    print(f"{name} ...", flush=True)
    t0 = time.monotonic()
    try:
        fn(*args)
    except Skip as e:
        print(f"{name}: SKIPPED: {e}", flush=True)
        return
    except Exception as e:  # one failure; the other tests still run
        traceback.print_exc()
        check(False, f"raised {type(e).__name__}: {e}")
    verdict = "PASS" if len(FAILURES) == before else "FAIL"
    print(f"{name}: {verdict} ({time.monotonic() - t0:.1f} s)", flush=True)


def short(x, n=300):
    s = x if isinstance(x, str) else repr(x)
    return s if len(s) <= n else s[:n] + "..."


# ---------- the server process ----------


class ServerError(Exception):
    pass


class Server:
    """`heed serve MODEL --port 0 ...`: waits for its ready line, drains its stderr."""

    def __init__(self, name, heed, model_path, args, key=None, ready_s=120):
        self.name, self.key, self.stopped = name, key, False
        base = os.path.basename(model_path)
        self.model_name = base[:-5] if base.endswith(".gguf") else base
        self.log = deque(maxlen=200)
        self._lines = queue.Queue()
        self._ready = False
        cmd = [heed, "serve", model_path, "--host", "127.0.0.1", "--port", "0", "--threads", "2", *args]
        if key:
            cmd += ["--api-key", key]
        self.cmd = cmd
        print(f"  starting {name}: {' '.join(cmd)}", flush=True)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        try:
            self._wait_ready(ready_s)
        except ServerError as e:
            self.kill()
            self._reader.join(timeout=5)
            raise ServerError("\n    ".join([str(e), "its stderr ends:", *self.tail()])) from None
        except BaseException:
            self.kill()
            raise

    def _drain(self):
        for raw in self.proc.stderr:  # ends when the server closes stderr (exits)
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.log.append(line)
            if not self._ready:
                self._lines.put(line)
        self._lines.put(None)

    def _wait_ready(self, limit):
        deadline = time.monotonic() + limit
        self.url = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerError(f"no 'heed serve: ready' line within {limit} s")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                try:
                    rc = self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    rc = "still running"
                raise ServerError(f"stderr closed before the ready line (exit {rc})")
            m = re.search(r"heed serve: listening on (http://\S+)", line)
            if m:
                self.url = m.group(1).rstrip("/")
            elif "heed serve: ready" in line:
                if not self.url:
                    raise ServerError("ready before any 'listening on' line")
                break
        self._ready = True
        u = urllib.parse.urlsplit(self.url)
        self.host, self.port = u.hostname, u.port
        if not self.port:
            raise ServerError(f"no port in {self.url}")

    def stop(self):
        """SIGTERM; (exit code, seconds, None) or (None, seconds, why) when it had died or had to be killed."""
        self.stopped = True
        if self.proc.poll() is not None:
            return None, 0.0, f"it had already exited (code {self.proc.returncode}) before SIGTERM"
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc, why = self.proc.wait(timeout=20), None
        except subprocess.TimeoutExpired:
            self.kill()
            rc, why = None, "still running 20 s after SIGTERM: killed"
        self._reader.join(timeout=5)
        return rc, time.monotonic() - t0, why

    def kill(self):
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def tail(self, n=30):
        return list(self.log)[-n:]


def start_server(servers, name, *args, **kw):
    """A started Server (also appended to servers), or None with the failure recorded."""
    _current["test"] = f"start {name}"
    try:
        srv = Server(name, *args, **kw)
    except (ServerError, OSError) as e:
        check(False, f"{name}: {e}")
        return None
    servers.append(srv)
    print(f"  {name} ready at {srv.url}", flush=True)
    return srv


def test_shutdown(srv):
    rc, secs, why = srv.stop()
    if check(why is None, f"{srv.name}: {why}"):
        check(rc == 0, f"{srv.name}: exit code {rc} after SIGTERM (wanted 0)")
        print(f"  {srv.name} stopped in {secs:.1f} s", flush=True)


# ---------- HTTP ----------

_DEFAULT = object()


def http_raw(srv, method, path, body=None, headers=None, key=_DEFAULT, timeout=120):
    """(status, {lowercase header: value}, body bytes). key: the Bearer key (the server's by default; None: none)."""
    h = {}
    if key is _DEFAULT:
        key = srv.key
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    if body is not None:
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def http_json(srv, method, path, body=None, headers=None, key=_DEFAULT, timeout=120):
    """(status, headers, the body parsed as JSON, or its text when it is not JSON)."""
    status, hdrs, data = http_raw(srv, method, path, body, headers, key, timeout)
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = data.decode("utf-8", "replace")
    return status, hdrs, parsed


def post_chat(srv, body, key=_DEFAULT, timeout=180):
    return http_json(srv, "POST", CHAT, body, key=key, timeout=timeout)


def post_messages(srv, body, key=_DEFAULT, path=MESSAGES, timeout=180):
    """An Anthropic-style request: the key as x-api-key."""
    if key is _DEFAULT:
        key = srv.key
    headers = {"anthropic-version": ANTHROPIC_VERSION}
    if key is not None:
        headers["x-api-key"] = key
    return http_json(srv, "POST", path, body, headers=headers, key=None, timeout=timeout)


def chat_body(messages, max_tokens=16, **kw):
    return {"model": "any-model", "messages": messages, "max_tokens": max_tokens, "temperature": 0, **kw}


def user(text):
    return [{"role": "user", "content": text}]


def content_of(resp_body):
    return resp_body["choices"][0]["message"]["content"]


def anthropic_text(resp_body):
    return "".join(b.get("text", "") for b in resp_body["content"] if b.get("type") == "text")


def tokenize(srv, body):
    st, _, r = http_json(srv, "POST", "/tokenize", body)
    if st != 200:
        raise AssertionError(f"/tokenize {short(body)} answered {st}: {short(r)}")
    return r


def common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def health_ok(srv, label):
    try:
        st, _, body = http_json(srv, "GET", "/health", key=None, timeout=15)
    except OSError as e:
        return check(False, f"after {label}: GET /health failed: {e}")
    return check(st == 200 and body == {"status": "ok"}, f"after {label}: GET /health answered {st} {short(body)}")


def error_shape(body):
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None
    return "anthropic" if body.get("type") == "error" else "openai"


def error_message(body):
    if isinstance(body, dict):
        e = body.get("error", body)
        if isinstance(e, dict) and isinstance(e.get("message"), str):
            return e["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
    return str(body)


def check_error(label, got, want_status, shape, fields=()):
    """got: (status, headers, body). shape: 'openai', 'anthropic' or 'any'. fields: the message must name one."""
    status, headers, body = got
    if not check(status == want_status, f"{label}: status {status}, wanted {want_status}: {short(body)}"):
        return
    check("json" in headers.get("content-type", ""), f"{label}: Content-Type {headers.get('content-type')!r}")
    sh = error_shape(body)
    if not check(sh is not None and (shape == "any" or sh == shape),
                 f"{label}: not an error in the {shape} shape: {short(body)}"):
        return
    e = body["error"]
    msg = e.get("message")
    check(isinstance(msg, str) and msg, f"{label}: no error message: {short(body)}")
    want_type = ERROR_TYPES.get(want_status)
    if want_type:
        check(e.get("type") == want_type, f"{label}: error type {e.get('type')!r}, wanted {want_type!r}")
    if sh == "openai":
        check("param" in e and "code" in e, f"{label}: the OpenAI error lacks param or code: {short(body)}")
    if fields and isinstance(msg, str):
        check(any(f in msg for f in fields), f"{label}: the message {msg!r} names none of {list(fields)}")


# ---------- server-sent events ----------


def open_stream(srv, path, body, headers=None, key=_DEFAULT, timeout=120):
    """(connection, its socket, response) of a streaming POST; the caller closes them."""
    h = {"Content-Type": "application/json"}
    if key is _DEFAULT:
        key = srv.key
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    h.update(headers or {})
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=timeout)
    conn.connect()
    sock = conn.sock  # kept: http.client drops it from conn when the response will close the connection
    conn.request("POST", path, body=json.dumps(body).encode(), headers=h)
    return conn, sock, conn.getresponse()


def sse_events(resp, deadline):
    """(event name or None, data text) of each event of a text/event-stream response."""
    event, data = None, []
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("the event stream ran past its deadline")
        line = resp.readline()
        if not line:
            if data:
                yield event, "\n".join(data)
            return
        line = line.decode("utf-8").rstrip("\r\n")
        if not line:
            if data or event:
                yield event, "\n".join(data)
            event, data = None, []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            v = line[5:]
            data.append(v[1:] if v.startswith(" ") else v)


def read_stream(srv, path, body, headers=None, key=_DEFAULT, limit_s=120):
    """(status, headers, [(event, data)]) of a whole streamed request."""
    conn, _, resp = open_stream(srv, path, body, headers, key)
    try:
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        if resp.status != 200:
            return resp.status, hdrs, resp.read()
        return resp.status, hdrs, list(sse_events(resp, time.monotonic() + limit_s))
    finally:
        conn.close()


# ---------- raw sockets ----------


def _dechunk(data):
    out, i = b"", 0
    while True:
        j = data.find(b"\r\n", i)
        if j < 0:
            return out
        try:
            n = int(data[i:j].split(b";")[0], 16)
        except ValueError:
            return out
        if n == 0:
            return out
        out += data[j + 2:j + 2 + n]
        i = j + 2 + n + 2


def read_response(sock, deadline):
    """What the server sends on sock until it has a whole response, closes, or the deadline passes:
    (status or None, headers, body bytes, how) with how 'complete', 'closed', 'reset' or 'timeout'."""
    buf, how = b"", None

    def more():
        nonlocal buf, how
        left = deadline - time.monotonic()
        if left <= 0:
            how = "timeout"
            return False
        sock.settimeout(left)
        try:
            d = sock.recv(65536)
        except socket.timeout:
            how = "timeout"
            return False
        except OSError:
            how = "reset"
            return False
        if not d:
            how = "closed"
            return False
        buf += d
        return True

    while b"\r\n\r\n" not in buf:
        if not more():
            break
    if b"\r\n\r\n" not in buf:
        m = re.match(rb"HTTP/1\.[01] (\d{3})", buf)
        return (int(m.group(1)) if m else None), {}, b"", how
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    status = int(m.group(1)) if m else None
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    if "content-length" in hdrs:
        n = int(hdrs["content-length"])
        while len(buf) - len(head) - 4 < n and more():
            pass
        body = buf[len(head) + 4:len(head) + 4 + n]
    elif "chunked" in hdrs.get("transfer-encoding", ""):
        while not buf.endswith(b"0\r\n\r\n") and more():
            pass
        body = _dechunk(buf[len(head) + 4:])
    else:
        while more():
            pass
        body = buf[len(head) + 4:]
    return status, hdrs, body, how or "complete"


def send_body(srv, path, length, pieces, limit_s=60):
    """POSTs pieces (bytes) as a body announced as length bytes long, stopping as soon as the server
    answers or closes. (status or None, headers, body bytes, bytes sent, how the reading ended)."""
    sock = socket.create_connection((srv.host, srv.port), timeout=10)
    deadline = time.monotonic() + limit_s
    sent = 0
    try:
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: {srv.host}:{srv.port}\r\nAuthorization: Bearer {srv.key}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode())
        for piece in pieces:
            if time.monotonic() > deadline:
                break
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:  # an early answer, or the server closing
                break
            sock.settimeout(10)
            try:
                sock.sendall(piece)
            except OSError:  # reset, broken pipe, or the server stopped reading for 10 s
                break
            sent += len(piece)
        status, hdrs, body, how = read_response(sock, time.monotonic() + 15)
    finally:
        sock.close()
    return status, hdrs, body, sent, how


def parse_json_bytes(b):
    try:
        return json.loads(b)
    except ValueError:
        return b.decode("utf-8", "replace")


# ---------- /metrics ----------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text format: {(name, frozenset of (label, value)): value}."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise ValueError(f"bad /metrics line: {line!r}")
        labels = frozenset((k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
                           for k, v in _LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))  # float() reads +Inf and NaN too
    return out


def get_metrics(srv):
    st, hdrs, data = http_raw(srv, "GET", "/metrics", timeout=30)
    if st != 200:
        raise AssertionError(f"/metrics answered {st}: {short(data)}")
    return parse_metrics(data.decode("utf-8"))


def metric(ms, name, default=None, **labels):
    """The value of the series name{labels} (exactly those labels), or default."""
    return ms.get((name, frozenset(labels.items())), default)


def series(ms, name):
    return {lab: v for (n, lab), v in ms.items() if n == name}


def requests_ok(ms, endpoint):
    return metric(ms, "heed_requests_total", 0.0, endpoint=endpoint, status="200")


def wait_metrics(srv, cond, limit_s=10):
    """Polls /metrics until cond(metrics) holds or limit_s passes; the last metrics read."""
    deadline = time.monotonic() + limit_s
    while True:
        ms = get_metrics(srv)
        if cond(ms) or time.monotonic() > deadline:
            return ms
        time.sleep(0.2)


def settle(srv):
    """Waits (up to 10 s) until nothing runs: a finished sequence is then in the prefix cache."""
    wait_metrics(srv, lambda ms: metric(ms, "heed_running_sequences") == 0 and metric(ms, "heed_queue_depth") == 0)


def check_histogram(ms, name):
    buckets = sorted((float(dict(lab)["le"]), v) for lab, v in series(ms, name + "_bucket").items()
                     if "le" in dict(lab))
    count, total = metric(ms, name + "_count"), metric(ms, name + "_sum")
    if not check(buckets and count is not None and total is not None,
                 f"{name}: buckets, _sum or _count missing"):
        return
    vals = [v for _, v in buckets]
    check(all(a <= b for a, b in zip(vals, vals[1:])), f"{name}: bucket counts decrease: {buckets}")
    check(buckets[-1][0] == float("inf") and buckets[-1][1] == count,
          f"{name}: the +Inf bucket {buckets[-1]} is not _count {count}")
    check(total >= 0, f"{name}: _sum {total} < 0")


# ---------- text ----------


def harbor_log(seed, n=20):
    """Varied English of about 17 tokens a sentence."""
    adjs = ["red", "quiet", "ancient", "rusty", "bright", "hollow", "narrow", "gentle"]
    nouns = ["ship", "lantern", "harbor crane", "fishing boat", "signal flag", "anchor", "ferry", "buoy", "warehouse"]
    places = ["north pier", "old lighthouse", "customs house", "river mouth", "stone bridge", "market square",
              "dry dock"]
    verbs = ["flickered", "drifted", "creaked", "rang", "was repainted", "was inspected", "vanished"]
    out = []
    for i in range(n):
        k = seed * 7 + i
        out.append(f"On day {k * 3 + 1}, the {adjs[k % 8]} {nouns[k * 5 % 9]} near the {places[k * 3 % 7]} "
                   f"{verbs[k * 2 % 7]} {k % 11 + 2} times.")
    return f"Harbor log number {seed}. " + " ".join(out)


def pick_stop(text):
    """A word of text (its 3rd to 5th, else another) whose first occurrence is not at its start."""
    words = re.findall(r"[A-Za-z]{3,}", text)
    for w in words[2:5] + words[1:2] + words[5:]:
        if text.find(w) > 0:
            return w
    return None


def expect_raises(label, exc_type, fn, fields=()):
    """Calls fn; checks that it raises exc_type (an SDK status error) naming one of fields. The exception or None."""
    try:
        r = fn()
    except exc_type as e:
        if fields:
            msg = error_message(getattr(e, "body", None))
            check(any(f in msg for f in fields), f"{label}: the message {msg!r} names none of {list(fields)}")
        return e
    except (openai.APIStatusError, anthropic.APIStatusError) as e:
        check(False, f"{label}: {type(e).__name__} ({e.status_code}), wanted {exc_type.__name__}: {short(str(e))}")
        return None
    check(False, f"{label}: no error, wanted {exc_type.__name__}; got {short(repr(r))}")
    return None


def openai_client(srv, key=_DEFAULT):
    if key is _DEFAULT:
        key = srv.key or "none"
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=180)


def anthropic_client(srv, key=_DEFAULT):
    if key is _DEFAULT:
        key = srv.key or "none"
    return anthropic.Anthropic(base_url=srv.url, api_key=key, max_retries=0, timeout=180)


# ---------- the tests ----------


def test_basics(srv):
    st, _, body = http_json(srv, "GET", "/health", key=None)
    check(st == 200 and body == {"status": "ok"}, f"GET /health (no key): {st} {short(body)}")
    st, _, body = http_json(srv, "GET", "/v1/models")
    if check(st == 200 and isinstance(body, dict), f"GET /v1/models: {st} {short(body)}"):
        data = body.get("data")
        check(body.get("object") == "list" and isinstance(data, list) and data, f"/v1/models: {short(body)}")
        if data:
            check(data[0].get("id") == srv.model_name and data[0].get("object") == "model",
                  f"/v1/models data[0] {short(data[0])}: wanted id {srv.model_name!r}, object 'model'")
    text = "Hello world, this is heed serving. Ünïcödé 日本語 🎉"
    tok = tokenize(srv, {"content": text})
    ids = tok.get("ids")
    check(isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids), f"/tokenize ids: {short(tok)}")
    check(tok.get("text") == text, f"/tokenize text {tok.get('text')!r}, wanted {text!r}")
    st, _, det = http_json(srv, "POST", "/detokenize", {"tokens": ids})
    check(st == 200 and isinstance(det, dict) and det.get("content") == text,
          f"/detokenize of /tokenize's ids: {st} {short(det)}, wanted {text!r}")
    chat = tokenize(srv, {"messages": user(text)})
    check(isinstance(chat.get("text"), str) and text in chat["text"], f"/tokenize messages text: {short(chat)}")
    check(isinstance(chat.get("ids"), list) and len(chat["ids"]) > len(ids),
          f"/tokenize messages: {len(chat.get('ids') or [])} ids, not more than the content's {len(ids)}")


def test_openai_sdk(srv):
    c = openai_client(srv)
    msgs = user("Describe the sea in two sentences.")
    r = c.chat.completions.create(model="gpt-4o", messages=msgs, temperature=0, max_tokens=32)
    ch = r.choices[0]
    text = ch.message.content
    check(isinstance(text, str) and text.strip(), f"chat: content {text!r}")
    text = text or ""
    check(r.object == "chat.completion", f"chat: object {r.object!r}")
    check(r.model == srv.model_name, f"chat: model {r.model!r}, wanted the served {srv.model_name!r}")
    check(ch.message.role == "assistant", f"chat: role {ch.message.role!r}")
    check(ch.finish_reason in ("stop", "length"), f"chat: finish_reason {ch.finish_reason!r}")
    u = r.usage
    check(u.total_tokens == u.prompt_tokens + u.completion_tokens, f"chat: usage does not add up: {u}")
    check(0 < u.completion_tokens <= 32, f"chat: completion_tokens {u.completion_tokens} (max_tokens 32)")
    if ch.finish_reason == "length":
        check(u.completion_tokens == 32, f"chat: finish_reason length at {u.completion_tokens} tokens of 32")
    details = u.prompt_tokens_details
    check(details is not None and isinstance(details.cached_tokens, int),
          f"chat: usage.prompt_tokens_details.cached_tokens missing: {u}")
    n_prompt = len(tokenize(srv, {"messages": msgs})["ids"])
    check(u.prompt_tokens == n_prompt, f"chat: prompt_tokens {u.prompt_tokens}, /tokenize says {n_prompt}")
    print(f"  greedy: {text!r}")

    # The same request streamed.
    parts, finish, usages, last = [], None, [], None
    for chunk in c.chat.completions.create(model="gpt-4o", messages=msgs, temperature=0, max_tokens=32, stream=True,
                                           stream_options={"include_usage": True}):
        last = chunk
        if chunk.choices:
            if chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            if chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        if chunk.usage is not None:
            usages.append(chunk.usage)
    check("".join(parts) == text, f"stream: text {''.join(parts)!r} != non-stream {text!r}")
    check(finish == ch.finish_reason, f"stream: finish_reason {finish!r}, non-stream {ch.finish_reason!r}")
    if check(len(usages) == 1, f"stream: {len(usages)} chunks with usage, wanted 1"):
        su = usages[0]
        check(last is not None and last.usage is not None and not last.choices,
              "stream: the usage chunk is not the last, or it has choices")
        check(su.completion_tokens == u.completion_tokens and su.prompt_tokens == u.prompt_tokens
              and su.total_tokens == su.prompt_tokens + su.completion_tokens,
              f"stream: usage {su}, non-stream {u}")

    # The raw stream ends with [DONE].
    st, _, events = read_stream(srv, CHAT, {"model": "m", "messages": msgs, "max_tokens": 4, "stream": True})
    if check(st == 200 and events, f"raw stream: {st} {short(events)}"):
        check(events[-1][1] == "[DONE]", f"raw stream: the last event is {events[-1]!r}, not [DONE]")
        for _, data in events[:-1]:
            if not check(json.loads(data).get("object") == "chat.completion.chunk", f"raw stream chunk: {data!r}"):
                break

    # Stop strings: the output is the greedy output cut before the stop.
    stop = pick_stop(text)
    if check(stop is not None, f"no stop string to pick in {text!r}"):
        r2 = c.chat.completions.create(model="gpt-4o", messages=msgs, temperature=0, max_tokens=32, stop=[stop])
        want = text[:text.find(stop)]
        got = r2.choices[0].message.content
        check(got == want, f"stop {stop!r}: content {got!r}, wanted {want!r}")
        check(r2.choices[0].finish_reason == "stop", f"stop {stop!r}: finish_reason {r2.choices[0].finish_reason!r}")

    # logprobs with top_logprobs.
    r3 = c.chat.completions.create(model="gpt-4o", messages=msgs, temperature=0, max_tokens=16, logprobs=True,
                                   top_logprobs=3)
    c3 = r3.choices[0].message.content or ""
    check(text.startswith(c3), f"logprobs: 16-token greedy output {c3!r} is not a prefix of the 32-token {text!r}")
    lp = r3.choices[0].logprobs
    if check(lp is not None and lp.content, f"logprobs: choices[0].logprobs {lp!r}"):
        toks = lp.content
        joined = "".join(t.token for t in toks)
        check(joined == c3, f"logprobs: the tokens make {joined!r}, the content is {c3!r}")
        bad = []
        for i, t in enumerate(toks):
            tops = t.top_logprobs or []
            vals = [x.logprob for x in tops]
            if not (t.logprob <= 1e-6 and len(tops) == 3 and all(a >= b for a, b in zip(vals, vals[1:]))
                    and vals[0] >= t.logprob - 1e-4 and abs(vals[0] - t.logprob) <= 1e-4):
                bad.append((i, t.token, t.logprob, [(x.token, x.logprob) for x in tops]))
        check(not bad, f"logprobs: tokens whose logprob > 0, top list not 3 long/sorted, or greedy token not on "
                       f"top: {short(bad, 600)}")

    # Legacy completions, plain and streamed.
    rc = c.completions.create(model="gpt-3.5-turbo-instruct", prompt="The capital of France is", max_tokens=8,
                              temperature=0)
    ctext = rc.choices[0].text
    check(isinstance(ctext, str) and rc.object == "text_completion", f"completions: {rc}")
    check(rc.choices[0].finish_reason in ("stop", "length"), f"completions: finish_reason {rc.choices[0].finish_reason}")
    check(rc.usage is not None and 0 < rc.usage.completion_tokens <= 8
          and rc.usage.total_tokens == rc.usage.prompt_tokens + rc.usage.completion_tokens,
          f"completions: usage {rc.usage}")
    streamed = "".join(chunk.choices[0].text for chunk in
                       c.completions.create(model="x", prompt="The capital of France is", max_tokens=8,
                                            temperature=0, stream=True) if chunk.choices)
    check(streamed == ctext, f"completions: streamed {streamed!r}, non-stream {ctext!r}")

    ids = [m.id for m in c.models.list()]
    check(ids and ids[0] == srv.model_name, f"models.list: {ids}, wanted {srv.model_name!r} first")


def test_anthropic_sdk(srv):
    a = anthropic_client(srv)
    system = "You are a helpful assistant."
    msgs = user("Tell me about mountains in two sentences.")
    m = a.messages.create(model="claude-test", max_tokens=32, extra_body=GREEDY, system=system, messages=msgs)
    text = "".join(b.text for b in m.content if b.type == "text")
    check(m.type == "message" and m.role == "assistant", f"messages: type {m.type!r} role {m.role!r}")
    check(text.strip(), f"messages: text {text!r}")
    check(m.model == srv.model_name, f"messages: model {m.model!r}, wanted {srv.model_name!r}")
    check(m.stop_reason in ("end_turn", "max_tokens"), f"messages: stop_reason {m.stop_reason!r}")
    check(m.stop_sequence is None, f"messages: stop_sequence {m.stop_sequence!r} with no stop sequence")
    u = m.usage
    check(0 < u.output_tokens <= 32, f"messages: output_tokens {u.output_tokens}")
    cache_read = u.cache_read_input_tokens or 0
    check(isinstance(u.input_tokens, int) and u.input_tokens > 0, f"messages: input_tokens {u.input_tokens}")
    if m.stop_reason == "max_tokens":
        check(u.output_tokens == 32, f"messages: max_tokens stop at {u.output_tokens} tokens of 32")
    total_in = u.input_tokens + cache_read
    print(f"  greedy: {text!r}")

    # System as text blocks: the same prompt.
    m2 = a.messages.create(model="claude-test", max_tokens=32, extra_body=GREEDY, messages=msgs,
                           system=[{"type": "text", "text": system}])
    t2 = "".join(b.text for b in m2.content if b.type == "text")
    check(t2 == text, f"system as blocks: {t2!r}, as a string: {text!r}")
    check(m2.usage.input_tokens + (m2.usage.cache_read_input_tokens or 0) == total_in,
          f"system as blocks: prompt tokens {m2.usage}, as a string {u}")

    # Streamed through the SDK.
    with a.messages.stream(model="claude-test", max_tokens=32, extra_body=GREEDY, system=system, messages=msgs) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    check(streamed == text, f"stream: {streamed!r}, non-stream {text!r}")
    check(final.stop_reason == m.stop_reason, f"stream: stop_reason {final.stop_reason!r}, non-stream "
                                              f"{m.stop_reason!r}")
    check(final.usage.output_tokens == u.output_tokens, f"stream: usage {final.usage}, non-stream {u}")
    check(final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0) == total_in,
          f"stream: prompt tokens {final.usage}, non-stream {u}")

    # The raw event sequence.
    st, _, events = read_stream(srv, MESSAGES, {"model": "m", "max_tokens": 32, "temperature": 0, "system": system,
                                                "messages": msgs, "stream": True},
                                headers={"x-api-key": KEY, "anthropic-version": ANTHROPIC_VERSION}, key=None)
    if check(st == 200 and events, f"raw messages stream: {st} {short(events)}"):
        datas = [(ev, json.loads(d)) for ev, d in events]
        datas = [(ev, d) for ev, d in datas if d.get("type") != "ping"]
        check(all(ev == d.get("type") for ev, d in datas), f"raw messages stream: event names differ from their "
                                                           f"data's type: {short([ev for ev, _ in datas])}")
        letters = {"message_start": "S", "content_block_start": "B", "content_block_delta": "D",
                   "content_block_stop": "E", "message_delta": "M", "message_stop": "Z"}
        seq = "".join(letters.get(d.get("type"), "?") for _, d in datas)
        check(re.fullmatch(r"S(BD*E)*MZ", seq), f"raw messages stream: event order {seq} "
                                                f"({[d.get('type') for _, d in datas]})")
        deltas = "".join(d["delta"].get("text", "") for _, d in datas if d.get("type") == "content_block_delta")
        check(deltas == text, f"raw messages stream: text {deltas!r}, non-stream {text!r}")
        md = [d for _, d in datas if d.get("type") == "message_delta"]
        if md:
            check(md[0].get("delta", {}).get("stop_reason") == m.stop_reason
                  and md[0].get("usage", {}).get("output_tokens") == u.output_tokens,
                  f"raw messages stream: message_delta {md[0]}")
        ms = [d for _, d in datas if d.get("type") == "message_start"]
        if ms:
            check(isinstance(ms[0].get("message", {}).get("usage", {}).get("input_tokens"), int),
                  f"raw messages stream: message_start without usage.input_tokens: {ms[0]}")

    # stop_sequences.
    stop = pick_stop(text)
    if check(stop is not None, f"no stop sequence to pick in {text!r}"):
        m3 = a.messages.create(model="claude-test", max_tokens=32, extra_body=GREEDY, system=system, messages=msgs,
                               stop_sequences=[stop, "zzqqxx"])
        t3 = "".join(b.text for b in m3.content if b.type == "text")
        want = text[:text.find(stop)]
        check(t3 == want, f"stop_sequences [{stop!r}]: {t3!r}, wanted {want!r}")
        check(m3.stop_reason == "stop_sequence" and m3.stop_sequence == stop,
              f"stop_sequences: stop_reason {m3.stop_reason!r} stop_sequence {m3.stop_sequence!r}, wanted {stop!r}")

    # count_tokens: the prompt tokens of the same request.
    n = a.messages.count_tokens(model="claude-test", system=system, messages=msgs).input_tokens
    check(isinstance(n, int) and n == total_in,
          f"count_tokens {n}, the request's input_tokens + cache_read_input_tokens {total_in}")

    # cache_control marks accepted (and they do not change the prompt).
    m4 = a.messages.create(model="claude-test", max_tokens=32, extra_body=GREEDY,
                           system=[{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
                           messages=[{"role": "user", "content": [
                               {"type": "text", "text": msgs[0]["content"], "cache_control": {"type": "ephemeral"}}]}])
    t4 = "".join(b.text for b in m4.content if b.type == "text")
    check(t4 == text, f"cache_control blocks: {t4!r}, without: {text!r}")


def test_sdk_errors(srv):
    msgs = user("Hi")
    expect_raises("openai, wrong key", openai.AuthenticationError,
                  lambda: openai_client(srv, key="wrong").chat.completions.create(model="m", messages=msgs,
                                                                                  max_tokens=4))
    expect_raises("anthropic, wrong key", anthropic.AuthenticationError,
                  lambda: anthropic_client(srv, key="wrong").messages.create(model="m", messages=msgs, max_tokens=4))
    expect_raises("openai, max_tokens 0", openai.BadRequestError,
                  lambda: openai_client(srv).chat.completions.create(model="m", messages=msgs, max_tokens=0),
                  fields=("max_tokens",))
    expect_raises("anthropic, max_tokens -1", anthropic.BadRequestError,
                  lambda: anthropic_client(srv).messages.create(model="m", messages=msgs, max_tokens=-1),
                  fields=("max_tokens",))


def test_bad_input(srv):
    ok = chat_body(user("hi"), max_tokens=8)

    def w(**kw):
        """ok with kw changed (None: left out)."""
        return {k: v for k, v in {**ok, **kw}.items() if v is not None}

    malformed = b'{"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"'
    bad_utf8 = b'{"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "a\xff\xfe\xc3b"}]}'
    cases = [  # (label, path, body, status, the message names one of)
        ("malformed JSON", CHAT, malformed, 400, ()),
        ("malformed JSON", MESSAGES, malformed, 400, ()),
        ("messages not a list", CHAT, w(messages="hi"), 400, ("messages",)),
        ("messages not a list", MESSAGES, w(messages="hi"), 400, ("messages",)),
        ("no messages", CHAT, w(messages=None), 400, ("messages",)),
        ("max_tokens a string", CHAT, w(max_tokens="8"), 400, ("max_tokens",)),
        ("max_tokens a string", MESSAGES, w(max_tokens="8"), 400, ("max_tokens",)),
        ("temperature 'hot'", CHAT, w(temperature="hot"), 400, ("temperature",)),
        ("temperature 'hot'", MESSAGES, w(temperature="hot"), 400, ("temperature",)),
        ("unknown role", CHAT, w(messages=[{"role": "wizard", "content": "hi"}]), 400, ("role", "wizard")),
        ("unknown role", MESSAGES, w(messages=[{"role": "wizard", "content": "hi"}]), 400, ("role", "wizard")),
        ("empty messages", CHAT, w(messages=[]), 400, ("messages",)),
        ("empty messages", MESSAGES, w(messages=[]), 400, ("messages",)),
        ("invalid UTF-8", CHAT, bad_utf8, 400, ()),
        ("invalid UTF-8", MESSAGES, bad_utf8, 400, ()),
        ("max_tokens 0", CHAT, w(max_tokens=0), 400, ("max_tokens",)),
        ("max_tokens -5", CHAT, w(max_tokens=-5), 400, ("max_tokens",)),
        ("max_tokens -5", MESSAGES, w(max_tokens=-5), 400, ("max_tokens",)),
        ("prompt a number", "/v1/completions", {"model": "m", "prompt": 5, "max_tokens": 8}, 400, ("prompt",)),
    ]
    for label, path, body, status, fields in cases:
        label = f"{path} {label}"
        shape = "anthropic" if path.startswith(MESSAGES) else "openai"
        if path == MESSAGES:
            got = post_messages(srv, body)
        else:
            got = http_json(srv, "POST", path, body)
        check_error(label, got, status, shape, fields)
        health_ok(srv, label)

    # Unknown paths.
    check_error("GET /v1/nope", http_json(srv, "GET", "/v1/nope"), 404, "any")
    check_error("POST /v1/nope", http_json(srv, "POST", "/v1/nope", ok), 404, "any")
    health_ok(srv, "unknown paths")

    # Keys.
    check_error("chat without a key", post_chat(srv, ok, key=None), 401, "openai")
    check_error("chat with a wrong key", post_chat(srv, ok, key="wrong"), 401, "openai")
    check_error("models without a key", http_json(srv, "GET", "/v1/models", key=None), 401, "openai")
    check_error("messages without a key", post_messages(srv, ok, key=None), 401, "anthropic")
    check_error("messages with a wrong x-api-key", post_messages(srv, ok, key="wrong"), 401, "anthropic")
    st, _, body = http_json(srv, "POST", CHAT, w(max_tokens=2), headers={"x-api-key": KEY}, key=None)
    check(st == 200, f"chat with x-api-key: {st} {short(body)}")
    st, _, body = http_json(srv, "POST", MESSAGES, w(max_tokens=2), headers={"anthropic-version": ANTHROPIC_VERSION})
    check(st == 200, f"messages with Authorization: Bearer: {st} {short(body)}")
    health_ok(srv, "keys")

    # Over the context: the prompt alone, then the prompt plus max_tokens.
    long_msgs = user("hello " * 3000)
    n_long = len(tokenize(srv, {"messages": long_msgs})["ids"])
    if check(n_long > CTX, f"'hello ' * 3000 is only {n_long} tokens"):
        got = post_chat(srv, w(messages=long_msgs, max_tokens=16))
        check_error(f"a {n_long}-token prompt", got, 400, "openai")
        msg = error_message(got[2])
        check(str(CTX) in msg and (str(n_long) in msg or str(n_long + 16) in msg),
              f"a {n_long}-token prompt: the message {msg!r} lacks {CTX} or {n_long}")
        got = post_messages(srv, w(messages=long_msgs, max_tokens=16))
        check_error(f"messages, a {n_long}-token prompt", got, 400, "anthropic")
        health_ok(srv, "a prompt over the context")
    n_short = len(tokenize(srv, {"messages": ok["messages"]})["ids"])
    big = CTX + 100
    got = post_chat(srv, w(max_tokens=big))
    check_error(f"max_tokens {big} with --ctx {CTX}", got, 400, "openai")
    msg = error_message(got[2])
    check(str(CTX) in msg and (str(big) in msg or str(n_short + big) in msg),
          f"max_tokens {big}: the message {msg!r} lacks {CTX} or {big}")
    health_ok(srv, f"max_tokens {big}")


def test_big_bodies(srv):
    # 2 MB of valid JSON with --max-body 1M.
    pad = "a" * (2 << 20)
    body = json.dumps(chat_body(user(pad), max_tokens=4)).encode()
    pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    status, hdrs, data, sent, how = send_body(srv, CHAT, len(body), pieces)
    if check(status == 413, f"2 MB body: status {status} (reading ended: {how}, {sent} bytes sent), wanted 413"):
        check_error("2 MB body", (status, hdrs, parse_json_bytes(data)), 413, "openai")
    health_ok(srv, "a 2 MB body")

    # 100 MB announced, zeros sent 1 MB at a time: a 413, or the connection closed early.
    total = 100_000_000
    zeros = bytes(1 << 20)
    pieces = itertools.chain(itertools.repeat(zeros, total // len(zeros)), [zeros[:total % len(zeros)]])
    status, hdrs, data, sent, how = send_body(srv, CHAT, total, pieces, limit_s=90)
    print(f"  100 MB: status {status}, {sent} bytes sent, reading ended: {how}")
    if status is not None:
        check(status == 413, f"100 MB body: status {status}, wanted 413: {short(data)}")
    else:
        check(sent < total and how in ("closed", "reset"),
              f"100 MB body: no answer after {sent} bytes sent, and reading ended by {how}")
    health_ok(srv, "a 100 MB body")


def wait_cut(sock, deadline):
    """How the server ended a stalled connection: 'closed', 'reset', '408', or the failure."""
    status, _, _, how = read_response(sock, deadline)
    if status is not None:
        return str(status)
    return how


def test_slow_client(srv):
    limit = TIMEOUT_S + 10
    partial = (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
               f"Content-Length: 100\r\n\r\n{{\"mo").encode()
    slow = socket.create_connection((srv.host, srv.port), timeout=10)
    idle = socket.create_connection((srv.host, srv.port), timeout=10)
    try:
        slow.sendall(partial)
        t0 = time.monotonic()
        # Others are served meanwhile.
        health_ok(srv, "a stalled request opened")
        st, _, body = post_chat(srv, chat_body(user("Say hi."), max_tokens=4), timeout=60)
        check(st == 200, f"a chat request beside a stalled one: {st} {short(body)}")
        how = wait_cut(slow, t0 + limit)
        secs = time.monotonic() - t0
        print(f"  stalled request: {how} after {secs:.1f} s")
        check(how in ("closed", "reset", "408"), f"stalled request: {how} after {secs:.1f} s, wanted the connection "
                                                 f"closed or a 408 within {limit} s")
        check(secs >= 2, f"stalled request cut after {secs:.1f} s, under --timeout {TIMEOUT_S}")
        how = wait_cut(idle, t0 + limit)
        check(how in ("closed", "reset", "408"), f"idle connection: {how}, wanted it closed within {limit} s")
    finally:
        slow.close()
        idle.close()
    health_ok(srv, "stalled clients")


def test_concurrency(srv):
    prompts = [f"Count from {n} to {n + 10}, separated by commas." for n in range(1, 1 + (8 if LIGHT else 16))]

    def ask(p):
        st, _, r = post_chat(srv, chat_body(user(p), max_tokens=24), timeout=240)
        if st != 200:
            raise AssertionError(f"{p!r}: {st} {short(r)}")
        return r

    before = wait_metrics(srv, lambda ms: metric(ms, "heed_running_sequences") == 0)
    together = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def worker(i):
        try:
            barrier.wait(timeout=30)
            together[i] = ask(prompts[i])
        except Exception as e:  # reported below
            together[i] = e

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(prompts))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    deadline = t0 + 300
    for t in threads:
        t.join(timeout=max(0.1, deadline - time.monotonic()))
    t_together = time.monotonic() - t0
    check(not any(t.is_alive() for t in threads), "concurrent requests still running after 300 s")
    t0 = time.monotonic()
    alone = [ask(p) for p in prompts]
    print(f"  {len(prompts)} at once: {t_together:.1f} s; one at a time: {time.monotonic() - t0:.1f} s")
    n_ok, gen, prompt, cached = 0, 0, 0, 0
    for p, tg, al in zip(prompts, together, alone):
        if not check(isinstance(tg, dict), f"concurrent {p!r}: {tg!r}"):
            continue
        check(content_of(tg) == content_of(al), f"{p!r}: concurrent {content_of(tg)!r} != alone {content_of(al)!r}")
        for r in (tg, al):
            n_ok += 1
            gen += r["usage"]["completion_tokens"]
            prompt += r["usage"]["prompt_tokens"]
            cached += r["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)

    def settled(ms):
        return (metric(ms, "heed_running_sequences") == 0 and metric(ms, "heed_queue_depth") == 0
                and requests_ok(ms, CHAT) - requests_ok(before, CHAT) == n_ok)

    after = wait_metrics(srv, settled)
    d_req = requests_ok(after, CHAT) - requests_ok(before, CHAT)
    check(d_req == n_ok, f"heed_requests_total{{{CHAT},200}} moved by {d_req}, {n_ok} requests were answered")

    def delta(name):
        return (metric(after, name) or 0) - (metric(before, name) or 0)

    check(delta("heed_generated_tokens_total") == gen,
          f"heed_generated_tokens_total moved by {delta('heed_generated_tokens_total')}, the responses made {gen}")
    check(delta("heed_cached_prompt_tokens_total") == cached,
          f"heed_cached_prompt_tokens_total moved by {delta('heed_cached_prompt_tokens_total')}, the responses "
          f"read {cached} from the cache")
    check(delta("heed_prompt_tokens_total") in (prompt, prompt - cached),
          f"heed_prompt_tokens_total moved by {delta('heed_prompt_tokens_total')}: neither the prompts' {prompt} "
          f"nor the {prompt - cached} not cached")
    check(delta("heed_time_to_first_token_seconds_count") == n_ok,
          f"heed_time_to_first_token_seconds_count moved by {delta('heed_time_to_first_token_seconds_count')}, "
          f"wanted {n_ok}")
    check(metric(after, "heed_running_sequences") == 0, f"heed_running_sequences "
                                                        f"{metric(after, 'heed_running_sequences')} at rest")
    check(metric(after, "heed_queue_depth") == 0, f"heed_queue_depth {metric(after, 'heed_queue_depth')} at rest")
    for name in METRIC_NAMES:
        check(series(after, name), f"/metrics has no {name}")
    for name in HISTOGRAMS:
        check_histogram(after, name)
    used, free = metric(after, "heed_kv_blocks_used"), metric(after, "heed_kv_blocks_free")
    check(used is not None and free is not None and used >= 0 and free >= 0,
          f"heed_kv_blocks_used {used}, heed_kv_blocks_free {free}")


def test_prefix_cache(srv, state):
    a_msgs = user(harbor_log(1) + "\n\nSummarize the log above in one sentence.")
    a_ids = tokenize(srv, {"messages": a_msgs})["ids"]
    print(f"  A: {len(a_ids)} prompt tokens")
    check(len(a_ids) >= 200, f"A's prompt is only {len(a_ids)} tokens")
    st, _, ra = post_chat(srv, chat_body(a_msgs, max_tokens=8))
    if not check(st == 200, f"A: {st} {short(ra)}"):
        return
    check(ra["usage"]["prompt_tokens"] == len(a_ids),
          f"A: prompt_tokens {ra['usage']['prompt_tokens']}, /tokenize says {len(a_ids)}")
    a_out = content_of(ra)
    settle(srv)

    # The same request again: all of its prompt but the last token from the cache.
    st, _, rc = post_chat(srv, chat_body(a_msgs, max_tokens=8))
    if check(st == 200, f"A again: {st} {short(rc)}"):
        got = rc["usage"]["prompt_tokens_details"]["cached_tokens"]
        check(got == len(a_ids) - 1, f"A again: cached_tokens {got}, wanted {len(a_ids) - 1}")
        check(content_of(rc) == a_out, f"A again: {content_of(rc)!r}, first {a_out!r}")

    # A longer conversation: at least A's prompt from the cache.
    b_msgs = a_msgs + [{"role": "assistant", "content": a_out}, {"role": "user", "content": "And more, please."}]
    b_ids = tokenize(srv, {"messages": b_msgs})["ids"]
    lcp = common_prefix(b_ids, a_ids)
    settle(srv)
    if lcp < len(a_ids):
        print(f"  note: B's tokens share {lcp} of A's {len(a_ids)} prompt tokens")
    st, _, rb = post_chat(srv, chat_body(b_msgs, max_tokens=8))
    if check(st == 200, f"B: {st} {short(rb)}"):
        got = rb["usage"]["prompt_tokens_details"]["cached_tokens"]
        lo, hi = min(lcp, len(b_ids) - 1), len(b_ids) - 1
        check(lo <= got <= hi, f"B: cached_tokens {got}, wanted {lo}..{hi}")
        check(rb["usage"]["prompt_tokens"] == len(b_ids),
              f"B: prompt_tokens {rb['usage']['prompt_tokens']}, /tokenize says {len(b_ids)}")
        state["b_msgs"], state["b_out"] = b_msgs, content_of(rb)

    # Anthropic: the same request twice.
    an_msgs = user(harbor_log(2) + "\n\nWhich day was the busiest?")
    body = {"model": "claude-test", "max_tokens": 8, "temperature": 0, "messages": an_msgs}
    st1, _, r1 = post_messages(srv, body)
    settle(srv)
    st2, _, r2 = post_messages(srv, body)
    stc, _, cnt = post_messages(srv, {"model": "claude-test", "messages": an_msgs}, path=MESSAGES + "/count_tokens")
    if check(st1 == 200 and st2 == 200 and stc == 200, f"messages twice, count_tokens: {st1} {st2} {stc} "
                                                       f"{short(r1)} {short(r2)} {short(cnt)}"):
        n = cnt["input_tokens"]
        u1, u2 = r1["usage"], r2["usage"]
        check(u1["input_tokens"] + u1.get("cache_read_input_tokens", 0) == n,
              f"messages, first: usage {u1}, count_tokens {n}")
        check(u2["input_tokens"] + u2.get("cache_read_input_tokens", 0) == n,
              f"messages, second: usage {u2}, count_tokens {n}")
        check(u2.get("cache_read_input_tokens", 0) == n - 1,
              f"messages, second: cache_read_input_tokens {u2.get('cache_read_input_tokens')}, wanted {n - 1}")
        check(isinstance(u2.get("cache_creation_input_tokens"), int), f"messages: no cache_creation_input_tokens: {u2}")
        check(anthropic_text(r1) == anthropic_text(r2), f"messages twice: {anthropic_text(r1)!r} then "
                                                         f"{anthropic_text(r2)!r}")


def test_prefix_cold(srv, state):
    """B on a server that has run nothing: nothing cached, the same output as B from the cache."""
    if "b_msgs" not in state:
        raise Skip("the prefix cache test made no B")
    body = chat_body(state["b_msgs"], max_tokens=8)
    body["model"] = srv.model_name
    st, _, r = post_chat(srv, body)
    if check(st == 200, f"B cold: {st} {short(r)}"):
        got = r["usage"]["prompt_tokens_details"]["cached_tokens"]
        check(got == 0, f"B cold: cached_tokens {got} on a fresh server")
        check(content_of(r) == state["b_out"], f"B cold: {content_of(r)!r}, from the cache: {state['b_out']!r}")


def test_strict_model(srv):
    c = openai_client(srv)
    msgs = user("Say hi.")
    expect_raises("openai, model gpt-4o", openai.NotFoundError,
                  lambda: c.chat.completions.create(model="gpt-4o", messages=msgs, max_tokens=4), fields=("gpt-4o",))
    r = c.chat.completions.create(model=srv.model_name, messages=msgs, max_tokens=4, temperature=0)
    check(r.model == srv.model_name and r.choices, f"the served model: {r}")
    check_error("completions, model gpt-4o",
                http_json(srv, "POST", "/v1/completions", {"model": "gpt-4o", "prompt": "Hi", "max_tokens": 4}),
                404, "openai", ("gpt-4o",))
    body = {"model": "claude-test", "max_tokens": 4, "messages": msgs}
    check_error("messages, model claude-test", post_messages(srv, body), 404, "anthropic", ("claude-test",))
    body["model"] = srv.model_name
    st, _, r = post_messages(srv, body)
    check(st == 200 and r.get("model") == srv.model_name, f"messages, the served model: {st} {short(r)}")


def test_rate_limit(srv):
    """--slots 1 --queue 1: of 8 requests at once, some wait and the rest get 429."""
    results = [None] * 8
    barrier = threading.Barrier(len(results))

    def worker(i):
        try:
            barrier.wait(timeout=30)
            results[i] = post_chat(srv, chat_body(user(f"Write a short poem about the number {i + 1}."),
                                                  max_tokens=64, model=srv.model_name), timeout=120)
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(results))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 180
    for t in threads:
        t.join(timeout=max(0.1, deadline - time.monotonic()))
    check(not any(t.is_alive() for t in threads), "rate limit: requests still running after 180 s")
    statuses = [r[0] if isinstance(r, tuple) else repr(r) for r in results]
    print(f"  statuses: {statuses}")
    check(all(s in (200, 429) for s in statuses), f"rate limit: statuses {statuses}, wanted 200 or 429")
    check(statuses.count(200) >= 1 and statuses.count(429) >= 1, f"rate limit: statuses {statuses}, wanted some "
                                                                 f"200 and some 429")
    for r in results:
        if isinstance(r, tuple) and r[0] == 429:
            check_error("429", r, 429, "openai")
            ra = r[1].get("retry-after", "")
            check(ra.strip().isdigit(), f"429 without a Retry-After of seconds: {ra!r}")
            break
    ms = wait_metrics(srv, lambda ms: metric(ms, "heed_queue_depth") == 0 and metric(ms, "heed_running_sequences") == 0)
    check(metric(ms, "heed_queue_depth") == 0 and metric(ms, "heed_running_sequences") == 0,
          f"rate limit: queue {metric(ms, 'heed_queue_depth')}, running {metric(ms, 'heed_running_sequences')} "
          f"at rest")
    st, _, body = post_chat(srv, chat_body(user("Say hi."), max_tokens=4, model=srv.model_name))
    check(st == 200, f"rate limit: a request afterwards: {st} {short(body)}")


def test_cache_report(srv):
    """Every response says what the cache did: heed_cache in the body and the final stream event, x-heed-cache
    as a header; a planted divergence is named by its token index and text, and traced to the request that
    made the cached sequence; an early divergence in a long prompt carries a hint."""
    base = harbor_log(31)
    a_msgs = user(base + " Which lantern was repainted?")
    b_text = base.replace("Harbor log number 31.", "Harbor log number 32.", 1)
    b_msgs = user(b_text + " Which lantern was repainted?")
    a_ids = tokenize(srv, {"messages": a_msgs})["ids"]
    b_ids = tokenize(srv, {"messages": b_msgs})["ids"]
    d = common_prefix(a_ids, b_ids)
    check(0 < d < 40, f"the planted change is at token {d}")
    st, ha, ra = post_chat(srv, chat_body(a_msgs, max_tokens=2))
    if not check(st == 200 and "heed_cache" in ra, f"A: {st} {short(ra)}"):
        return
    ca = ra["heed_cache"]
    check(ca["prompt_tokens"] == len(a_ids) and ca["reused"] + ca["recomputed"] == len(a_ids)
          and ca["reused"] == ra["usage"]["prompt_tokens_details"]["cached_tokens"], f"A's counts: {ca}")
    check(ha.get("x-heed-cache", "").startswith(f"reused={ca['reused']}; "), f"A's header: {ha.get('x-heed-cache')}")
    st, hb, rb = post_chat(srv, chat_body(b_msgs, max_tokens=2))
    if not check(st == 200 and "heed_cache" in rb, f"B: {st} {short(rb)}"):
        return
    cb = rb["heed_cache"]
    print(f"  B: {json.dumps(cb)[:400]}")
    print(f"  B's header: {hb.get('x-heed-cache')}")
    m, dv = cb.get("match", {}), cb.get("divergence", {})
    check(m.get("source") == "cache" and m.get("request") == ra["id"] and m.get("kind") == "finished",
          f"B's match is not A's finished sequence ({ra['id']}): {m}")
    check(m.get("shared_tokens") == d and cb["reused"] == d and cb["recomputed"] == len(b_ids) - d,
          f"B: shared {m.get('shared_tokens')}, reused {cb['reused']}; the prompts part at token {d}")
    check(dv.get("token") == d, f"B's divergence at {dv.get('token')}, wanted {d}")
    check("number 31. On" in dv.get("before", "") + dv.get("cached", "")
          and "number 32. On" in dv.get("before", "") + dv.get("new", ""),
          f"B's divergence excerpts do not show the change 31 -> 32: {dv}")
    check("hint" not in dv, f"a hint for a short prompt: {dv}")
    check(f"request={ra['id']}" in hb.get("x-heed-cache", "") and f"diverged_at={d}" in hb.get("x-heed-cache", ""),
          f"B's header: {hb.get('x-heed-cache')}")
    # B again, streamed: the whole prompt matches (no divergence), said in the last chunk and the header
    st, hdrs, evs = read_stream(srv, CHAT, chat_body(b_msgs, max_tokens=2, stream=True))
    if check(st == 200, f"B streamed: {st} {short(evs)}"):
        last = [json.loads(x) for _, x in evs if x != "[DONE]" and "heed_cache" in json.loads(x)]
        if check(len(last) == 1, f"B streamed: {len(last)} events with heed_cache"):
            c = last[0]["heed_cache"]
            check(c["reused"] == len(b_ids) - 1 and "divergence" not in c and c["match"]["shared_tokens"] == len(b_ids),
                  f"B streamed again: {c}")
        check(hdrs.get("x-heed-cache", "").startswith(f"reused={len(b_ids) - 1}; "),
              f"B streamed: header {hdrs.get('x-heed-cache')}")
    # Anthropic's shape carries it too, in the body and in message_delta
    st, hm, rm = post_messages(srv, {"model": "m", "max_tokens": 2, "temperature": 0, "messages": b_msgs})
    check(st == 200 and rm.get("heed_cache", {}).get("reused") == rm["usage"]["cache_read_input_tokens"]
          and "x-heed-cache" in hm, f"messages: {st} {short(rm)} {hm.get('x-heed-cache')}")
    st, _, evs = read_stream(srv, MESSAGES, {"model": "m", "max_tokens": 2, "temperature": 0, "stream": True,
                                            "messages": b_msgs})
    deltas = [json.loads(x) for ev, x in evs if ev == "message_delta"]
    check(st == 200 and deltas and "heed_cache" in deltas[-1], f"messages streamed: no heed_cache in message_delta")
    ms = get_metrics(srv)
    check(metric(ms, "heed_cache_prompt_tokens_total", how="reused") + metric(ms, "heed_cache_prompt_tokens_total",
          how="recomputed") == metric(ms, "heed_prompt_tokens_total") and metric(ms, "heed_cache_matches_total",
          source="cache") >= 4, f"/metrics cache counts: {series(ms, 'heed_cache_prompt_tokens_total')} "
                                f"{series(ms, 'heed_cache_matches_total')}")
    # a long prompt whose first line changes: the hint names it
    long_text = "Current time: 10:00:01.\n" + harbor_log(33, n=70)
    l_ids = tokenize(srv, {"messages": user(long_text)})["ids"]
    st, _, r1 = post_chat(srv, chat_body(user(long_text), max_tokens=1))
    st2, _, r2 = post_chat(srv, chat_body(user(long_text.replace("10:00:01", "10:00:07")), max_tokens=1))
    if check(st == 200 and st2 == 200, f"long prompts: {st} {st2} {short(r2)}"):
        dv = r2["heed_cache"].get("divergence", {})
        print(f"  hint ({len(l_ids)} tokens): {dv.get('hint')}")
        check(len(l_ids) >= 1024 and "near its top" in dv.get("hint", "")
              and "10:00:01" in dv.get("before", "") + dv.get("cached", "")
              and "10:00:07" in dv.get("before", "") + dv.get("new", ""),
              f"no hint for a changed first line of {len(l_ids)} tokens: {dv}")


def test_cancel(srv):
    before = wait_metrics(srv, lambda ms: metric(ms, "heed_running_sequences") == 0)
    blocks0 = metric(before, "heed_kv_blocks_used")
    cache0 = metric(before, "heed_cache_sequences")
    gen0 = metric(before, "heed_generated_tokens_total") or 0
    check(metric(before, "heed_running_sequences") == 0, "something runs before the cancellation test")
    check(blocks0 is not None, "/metrics has no heed_kv_blocks_used")
    body = {"model": "m", "stream": True, "max_tokens": 1500, "temperature": 0.9,
            "messages": user("Write a very long story about a dragon who learns to sail, at least 2000 words.")}
    conn, sock, resp = open_stream(srv, CHAT, body)
    n = 0
    try:
        if check(resp.status == 200, f"stream: status {resp.status}"):
            for _, data in sse_events(resp, time.monotonic() + 60):
                if data != "[DONE]":
                    n += 1
                if n >= 3:
                    break
        check(n >= 3, f"only {n} events before the stream ended")
    finally:
        # Hang up abruptly: SO_LINGER 0 makes close send a reset.
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        resp.close()
        sock.close()
        conn.close()
    t0 = time.monotonic()
    after = wait_metrics(srv, lambda ms: metric(ms, "heed_running_sequences") == 0)
    secs = time.monotonic() - t0
    check(metric(after, "heed_running_sequences") == 0,
          f"heed_running_sequences {metric(after, 'heed_running_sequences')} 10 s after the client hung up")
    made = (metric(after, "heed_generated_tokens_total") or 0) - gen0
    print(f"  stopped {secs:.1f} s after the hang-up, {made:.0f} tokens made")
    check(made < 1500, f"{made} tokens made: the generation ran to max_tokens after the client left")
    # What the generation took is given back; the prompt stays cached (it was cached once prefilled), so
    # the same prompt sent again (as agents do after a cancel) reads all but its last token from the cache.
    n_prompt = len(tokenize(srv, {"messages": body["messages"]})["ids"])
    bt = metric(after, "heed_kv_block_tokens")
    extra = metric(after, "heed_kv_blocks_used") - blocks0
    check(bt and 0 <= extra <= -(-n_prompt // bt),
          f"heed_kv_blocks_used {metric(after, 'heed_kv_blocks_used')} after the cancel, {blocks0} before: more than "
          f"the {n_prompt}-token prompt's blocks of {bt} tokens kept (heed_cache_sequences {cache0} -> "
          f"{metric(after, 'heed_cache_sequences')})")
    st, _, r = post_chat(srv, dict(body, stream=False, max_tokens=1))
    if check(st == 200, f"the cancelled prompt again: {st} {short(r)}"):
        got = r["usage"]["prompt_tokens_details"]["cached_tokens"]
        check(got == n_prompt - 1, f"the cancelled prompt again: cached_tokens {got}, wanted {n_prompt - 1}")
    st, _, r = post_chat(srv, chat_body(user("Say hi."), max_tokens=4))
    check(st == 200, f"a request after the cancel: {st} {short(r)}")


def test_running_share(srv):
    """B arrives while A, sharing B's long prefix, is still generating: B starts from A's blocks."""
    log = harbor_log(5)
    a_msgs = user(log + "\n\nWrite a long story about the harbor.")
    b_msgs = user(log + "\n\nWhich ship was inspected?")
    a_ids = tokenize(srv, {"messages": a_msgs})["ids"]
    b_ids = tokenize(srv, {"messages": b_msgs})["ids"]
    lcp = common_prefix(a_ids, b_ids)
    check(lcp >= 200, f"A and B share only {lcp} tokens")
    body = {"model": "m", "stream": True, "max_tokens": 400, "temperature": 0.8, "messages": a_msgs}
    conn, sock, resp = open_stream(srv, CHAT, body)
    try:
        n = 0
        for _, data in sse_events(resp, time.monotonic() + 60):
            n += data != "[DONE]"
            if n >= 2:  # A's prompt is all in its KV now
                break
        st, _, rb = post_chat(srv, chat_body(b_msgs, max_tokens=4))
        if check(st == 200, f"B beside A: {st} {short(rb)}"):
            got = rb["usage"]["prompt_tokens_details"]["cached_tokens"]
            check(got == min(lcp, len(b_ids) - 1), f"B beside A: cached_tokens {got}, wanted {min(lcp, len(b_ids) - 1)} "
                                                   f"(the prefix it shares with the running A)")
    finally:
        resp.close()
        sock.close()
        conn.close()
    wait_metrics(srv, lambda ms: metric(ms, "heed_running_sequences") == 0)


def test_long_waits(srv):
    """--timeout 1 --slots 1: requests that wait longer than the idle timeout (in the queue behind a long
    one, as behind a long prefill) still get their whole answer: a waiting stream sends keep-alives (an SSE
    comment, Anthropic's ping), and a waiting non-streaming request is not cut."""
    out = {}

    def long_one():
        t0 = time.monotonic()
        out["a"] = http_json(srv, "POST", "/v1/completions", {"model": "m", "prompt": "1, 2, 3, 4, 5, 6,",
                                                               "max_tokens": 100 if LIGHT else 300, "temperature": 0},
                             timeout=300)
        out["a_s"] = time.monotonic() - t0

    ta = threading.Thread(target=long_one, daemon=True)
    ta.start()
    wait_metrics(srv, lambda ms: metric(ms, "heed_running_sequences") == 1, limit_s=30)
    # B, OpenAI-style, queued behind A: its raw lines, comments included
    t0 = time.monotonic()
    conn, _, resp = open_stream(srv, CHAT, chat_body(user("Name three colors."), max_tokens=8, stream=True,
                                                     temperature=0))
    lines = []
    try:
        check(resp.status == 200, f"queued stream: status {resp.status}")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = resp.readline()
            if not line:
                break
            lines.append(line.decode("utf-8").rstrip("\r\n"))
    finally:
        conn.close()
    b_s = time.monotonic() - t0
    ta.join(timeout=300)
    a = out.get("a")
    if not check(a is not None and a[0] == 200, f"the long request: {short(a)}"):
        return
    print(f"  A: {a[2]['usage']['completion_tokens']} tokens in {out['a_s']:.1f} s; B waited and ran {b_s:.1f} s, "
          f"{sum(x.startswith(':') for x in lines)} keep-alives")
    check(b_s > 1.5, f"B took {b_s:.1f} s: the test needs it to wait past --timeout 1 (A too fast?)")
    check(out["a_s"] > 1.5, f"A took {out['a_s']:.1f} s: the test needs it past --timeout 1")
    check(any(x == ": keep-alive" for x in lines), f"the waiting stream sent no keep-alive: {lines[:5]}")
    check(lines and "data: [DONE]" in lines, f"the queued stream did not end with [DONE]: {lines[-3:]}")
    # C, Anthropic-style, queued behind another long one: ping events, then the whole message
    ta = threading.Thread(target=long_one, daemon=True)
    ta.start()
    wait_metrics(srv, lambda ms: metric(ms, "heed_running_sequences") == 1, limit_s=30)
    st, _, evs = read_stream(srv, MESSAGES, {"model": "m", "max_tokens": 8, "temperature": 0, "stream": True,
                                             "messages": [{"role": "user", "content": "Name three colors."}]},
                             limit_s=300)
    ta.join(timeout=300)
    if check(st == 200, f"queued messages stream: {st} {short(evs)}"):
        types = [json.loads(d).get("type") for _, d in evs]
        check("ping" in types, f"the waiting messages stream sent no ping: {types[:5]}")
        check(types[-1:] == ["message_stop"], f"the queued messages stream ended with {types[-3:]}")
    check(out.get("a", (0,))[0] == 200, f"the second long request: {short(out.get('a'))}")


def test_tenants(srv):
    """Two API keys, two caches: a prompt cached under one key is not reused under the other (a shared cache
    would tell one tenant, through timing, what the other sent), and /v1/cache lists only the caller's."""
    other = srv.other_key
    msgs = user(harbor_log(41) + " Which buoy rang?")
    n = len(tokenize(srv, {"messages": msgs})["ids"])
    st, _, r1 = post_chat(srv, chat_body(msgs, max_tokens=1))
    st2, _, r2 = post_chat(srv, chat_body(msgs, max_tokens=1), key=other)
    st3, _, r3 = post_chat(srv, chat_body(msgs, max_tokens=1))
    if not check(st == st2 == st3 == 200, f"tenants: {st} {st2} {st3} {short(r2)}"):
        return
    cached = [r["usage"]["prompt_tokens_details"]["cached_tokens"] for r in (r1, r2, r3)]
    print(f"  cached_tokens: first key {cached[0]}, second key {cached[1]}, first key again {cached[2]}")
    check(cached[1] < 10 and cached[2] == n - 1 and r2["heed_cache"]["match"].get("request") != r1["id"],
          f"tenants: cached_tokens {cached} for a {n}-token prompt (wanted the second key's below 10, then {n - 1})")
    st, _, l1 = http_json(srv, "GET", "/v1/cache")
    st2, _, l2 = http_json(srv, "GET", "/v1/cache", key=other)
    if check(st == st2 == 200, f"/v1/cache: {st} {st2}"):
        ids1 = {e["request"] for e in l1["entries"]}
        ids2 = {e["request"] for e in l2["entries"]}
        check(r1["id"] in ids1 or r3["id"] in ids1, f"/v1/cache (first key) lacks its request: {short(l1)}")
        check(r2["id"] in ids2 and not ids1 & ids2, f"/v1/cache lists another key's entries: {ids1} / {ids2}")
        e = next((e for e in l1["entries"] if e["request"] == r3["id"]), None)
        check(l1["count"] == len(l1["entries"]) and e and e["kind"] == "finished" and e["tokens"] >= n
              and e["blocks"] == -(-e["tokens"] // l1["block_tokens"]), f"/v1/cache entry: {e} in {short(l1)}")
    st, _, _ = http_json(srv, "GET", "/v1/cache", key="wrong")
    check(st == 401, f"/v1/cache with a wrong key: {st}")


def test_sessions(srv):
    """--slots 1 --ctx 1024 --cache-mem 10M --cache-entries 4: side requests with no session push the cache until it evicts;
    a named session's prompt (X-Session-Id) survives them and is reused whole; the same prompt without a
    session is evicted (the control: without retention the test would fail)."""
    def ask(text, session=None, n=2):
        hdrs = {"X-Session-Id": session} if session else None
        st, h, r = http_json(srv, "POST", CHAT, chat_body(user(text), max_tokens=n), headers=hdrs)
        if not check(st == 200, f"sessions: {st} {short(r)}"):
            raise RuntimeError("a request failed")
        return r

    def evictions(ms, retained):
        return metric(ms, "heed_cache_evictions_total", retained=retained) or 0

    main_text, plain_text = harbor_log(51, n=22), harbor_log(52, n=22)
    n_main = len(tokenize(srv, {"messages": user(main_text)})["ids"])
    n_plain = len(tokenize(srv, {"messages": user(plain_text)})["ids"])
    ask(main_text, session="agent-main-7f3a")
    plain_id = ask(plain_text)["id"]
    ms0 = get_metrics(srv)
    k = 0
    for k in range(1, 11):  # side requests until the cache has evicted twice
        ask(harbor_log(60 + k, n=22))
        if evictions(get_metrics(srv), "0") - evictions(ms0, "0") >= 2:
            break
    ms = get_metrics(srv)
    print(f"  {k} side requests: evictions {evictions(ms, '0') - evictions(ms0, '0')} plain, "
          f"{evictions(ms, '1') - evictions(ms0, '1')} retained")
    check(evictions(ms, "0") - evictions(ms0, "0") >= 2, f"no memory pressure after {k} side requests")
    check(evictions(ms, "1") == 0, f"{evictions(ms, '1')} evictions of a retained session's sequences")
    st, _, lst = http_json(srv, "GET", "/v1/cache")
    mine = [e for e in lst.get("entries", []) if e.get("session")] if st == 200 else []
    check(len(mine) >= 1 and all(e["retained"] and e["retained_s"] > 0 for e in mine),
          f"/v1/cache: the session's entries {mine}")
    r = ask(main_text, session="agent-main-7f3a", n=1)
    got = r["usage"]["prompt_tokens_details"]["cached_tokens"]
    check(got == n_main - 1, f"the session's prompt after the side requests: cached_tokens {got}, wanted {n_main - 1}")
    # a header past libmicrohttpd's memory limit (32 kB) is its 431 (or a close), and the server goes on
    try:
        st, _, _ = http_raw(srv, "POST", CHAT, chat_body(user("Say hi."), max_tokens=1),
                            headers={"X-Session-Id": "s" * 100000})
    except (BrokenPipeError, ConnectionResetError):  # it may answer and close before the body is sent
        st = "closed"
    check(st in (431, "closed"), f"a 100 kB X-Session-Id header: status {st}, wanted 431 or a close")
    health_ok(srv, "after a 100 kB header")
    # names are only hashed: a 100 kB one, or one with control characters, is a session like any other
    for name in ("s" * 100000, "tab\there\u0001\u00e9"):
        st, _, r = post_chat(srv, dict(chat_body(user("Say hi."), max_tokens=1), user=name))
        check(st == 200, f"a session named by a {len(name)}-character user: {st} {short(r)}")
    r = ask(plain_text, n=1)
    got = r["usage"]["prompt_tokens_details"]["cached_tokens"]
    ev = r["heed_cache"].get("evicted", {})
    print(f"  the evicted prompt again: {ev}")
    check(ev.get("request") == plain_id and ev.get("would_share", 0) >= n_plain - 32 and ev.get("why"),
          f"the miss of an evicted prompt does not name its eviction (request {plain_id}): {r['heed_cache']}")
    check(got < n_plain // 2, f"the same-sized prompt without a session: cached_tokens {got} of {n_plain}: it "
                              f"should have been evicted (else this test shows nothing)")


WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "description": "the city's name"}},
                  "required": ["city"]}


def test_tool_calls(srv):
    c = openai_client(srv)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.",
                                               "parameters": WEATHER_SCHEMA}}]
    msgs = user("What's the weather in Paris? Use the tool.")
    r = c.chat.completions.create(model="qwen", messages=msgs, tools=tools, temperature=0, max_tokens=64)
    ch = r.choices[0]
    check(ch.finish_reason == "tool_calls", f"finish_reason {ch.finish_reason!r}: {ch.message}")
    calls = ch.message.tool_calls or []
    if not check(calls, f"no tool_calls: {ch.message}"):
        return
    tc = calls[0]
    check(tc.type == "function" and isinstance(tc.id, str) and tc.id, f"tool call {tc}")
    check(tc.function.name == "get_weather", f"tool call name {tc.function.name!r}")
    try:
        args = json.loads(tc.function.arguments)
    except ValueError:
        args = None
    check(isinstance(args, dict) and "Paris" in str(args.get("city", "")), f"tool call arguments "
                                                                         f"{tc.function.arguments!r}")

    # The tool's result sent back.
    msgs2 = msgs + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": tc.id, "type": "function", "function": {"name": tc.function.name, "arguments": tc.function.arguments}}]},
        {"role": "tool", "tool_call_id": tc.id, "content": '{"temp_c": 21}'}]
    r2 = c.chat.completions.create(model="qwen", messages=msgs2, tools=tools, temperature=0, max_tokens=48)
    answer = r2.choices[0].message.content
    print(f"  answer: {answer!r}")
    check(isinstance(answer, str) and answer.strip(), f"the answer after the tool result: {r2.choices[0].message}")
    check(r2.choices[0].finish_reason in ("stop", "length"), f"after the tool result: finish_reason "
                                                             f"{r2.choices[0].finish_reason!r}")

    # Streamed: the deltas make the same call.
    got, finish = {}, None
    for chunk in c.chat.completions.create(model="qwen", messages=msgs, tools=tools, temperature=0, max_tokens=64,
                                           stream=True):
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        for t in d.tool_calls or []:
            e = got.setdefault(t.index, {"id": None, "name": "", "arguments": ""})
            if t.id:
                e["id"] = t.id
            if t.function and t.function.name:
                e["name"] += t.function.name
            if t.function and t.function.arguments:
                e["arguments"] += t.function.arguments
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    check(finish == "tool_calls", f"stream: finish_reason {finish!r}")
    if check(0 in got, f"stream: no tool call deltas: {got}"):
        e = got[0]
        check(e["name"] == tc.function.name and e["id"], f"stream: call {e}")
        try:
            sargs = json.loads(e["arguments"])
        except ValueError:
            sargs = None
        check(sargs == args, f"stream: arguments {e['arguments']!r}, non-stream {tc.function.arguments!r}")

    # Anthropic.
    a = anthropic_client(srv)
    atools = [{"name": "get_weather", "description": "Get the current weather in a city.",
               "input_schema": WEATHER_SCHEMA}]
    m = a.messages.create(model="qwen", max_tokens=64, extra_body=GREEDY, tools=atools, messages=msgs)
    check(m.stop_reason == "tool_use", f"anthropic: stop_reason {m.stop_reason!r}: {m.content}")
    uses = [b for b in m.content if b.type == "tool_use"]
    if not check(uses, f"anthropic: no tool_use block: {m.content}"):
        return
    b = uses[0]
    check(b.name == "get_weather" and isinstance(b.id, str) and b.id, f"anthropic: tool_use {b}")
    check(isinstance(b.input, dict) and "Paris" in str(b.input.get("city", "")), f"anthropic: input {b.input!r}")
    blocks = []
    for blk in m.content:
        if blk.type == "text":
            blocks.append({"type": "text", "text": blk.text})
        elif blk.type == "tool_use":
            blocks.append({"type": "tool_use", "id": blk.id, "name": blk.name, "input": blk.input})
    m2 = a.messages.create(model="qwen", max_tokens=48, extra_body=GREEDY, tools=atools, messages=msgs + [
        {"role": "assistant", "content": blocks},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": b.id, "content": '{"temp_c": 21}'}]}])
    t2 = "".join(x.text for x in m2.content if x.type == "text")
    print(f"  anthropic answer: {t2!r}")
    check(t2.strip() and m2.stop_reason in ("end_turn", "max_tokens"),
          f"anthropic: after the tool result: {m2.stop_reason!r} {m2.content}")


def test_chunk_reuse(srv):
    """x-heed-cache-reuse: chunks reuses the runs after a changed line but the boundary tokens; off reuses none."""
    body_text = harbor_log(81, n=14 if LIGHT else 40)  # LIGHT (sanitizers): ~300 tokens, still past 4 chunks

    def msgs(ts):
        return [{"role": "system", "content": f"Current time: {ts}. You answer questions about harbor logs."},
                {"role": "user", "content": body_text + "\nWhich ship rang most?"}]

    def ask(ts, mode):
        st, h, r = http_json(srv, "POST", CHAT, {"model": srv.model_name, "messages": msgs(ts), "max_tokens": 4, **GREEDY},
                             headers={"x-heed-cache-reuse": mode})
        if not check(st == 200, f"chunk reuse: {st} {short(r)}"):
            raise RuntimeError("a request failed")
        return h, r

    ask("2026-01-02 03:04:05", "chunks")
    old = tokenize(srv, {"messages": msgs("2026-01-02 03:04:05")})["ids"]
    new = tokenize(srv, {"messages": msgs("2026-01-02 17:45:59 UTC")})["ids"]
    lcp = common_prefix(old, new)
    k = 0
    while k < min(len(old), len(new)) - lcp and old[-1 - k] == new[-1 - k]:
        k += 1
    boundary = 8  # the server's default --cache-reuse-boundary
    want = (len(new) - 1) - (len(new) - k) - boundary
    h, r = ask("2026-01-02 17:45:59 UTC", "chunks")
    c = r["heed_cache"]
    print(f"  {len(new)} tokens, parting at {lcp}, the last {k} shared: shifted {c['reused_shifted']} (want {want})")
    check(c["reused"] == lcp and c["reused_shifted"] == want and c["recomputed"] == len(new) - lcp - want,
          f"chunks: {c}")
    check(r["usage"]["prompt_tokens_details"]["cached_tokens"] == lcp + want, f"cached_tokens: {r['usage']}")
    check(f"shifted={want};" in h.get("x-heed-cache", ""), f"x-heed-cache: {h.get('x-heed-cache')!r}")
    h, r = ask("2026-03-04 05:06:07 UTC", "off")
    c = r["heed_cache"]
    check(c["reused_shifted"] == 0 and c["reused"] < lcp + 8, f"off: {c}")
    got = http_json(srv, "POST", CHAT, {"model": srv.model_name, "messages": msgs("x"), "max_tokens": 2},
                    headers={"x-heed-cache-reuse": "sideways"})
    check_error("x-heed-cache-reuse: sideways", got, 400, "openai", ["sideways"])
    ms = get_metrics(srv)
    check((metric(ms, "heed_cache_prompt_tokens_total", how="shifted") or 0) >= want, "shifted tokens not counted")


def test_disk_tier(heed, gemma, servers):
    """The disk tier: evicted blocks read back, blocks surviving a restart, corrupt and foreign files deleted."""
    import shutil
    import tempfile
    tmp = tempfile.mkdtemp(prefix="heed_disk_")
    args = ["--slots", "1", "--ctx", str(CTX), "--cache-entries", "1", "--cache-dir", tmp, "--cache-disk", "1G"]
    try:
        srv = start_server(servers, "disk", heed, gemma, args)
        if not srv:
            return
        n_log = 18 if LIGHT else 40  # LIGHT (sanitizers): ~380 tokens, one whole block of 256
        a_text, b_text = harbor_log(71, n=n_log), harbor_log(72, n=n_log)
        n_a = len(tokenize(srv, {"messages": user(a_text)})["ids"])
        bl = metric(get_metrics(srv), "heed_kv_block_tokens")

        def ask(s, text):
            st, h, r = http_json(s, "POST", CHAT, chat_body(user(text), max_tokens=8, **GREEDY))
            if not check(st == 200, f"disk tier: {st} {short(r)}"):
                raise RuntimeError("a request failed")
            c = r["heed_cache"]
            check(c["reused"] + c["restored"] + c["recomputed"] == c["prompt_tokens"] and
                  r["usage"]["prompt_tokens_details"]["cached_tokens"] == c["reused"] + c["restored"],
                  f"disk tier: counts do not add up: {c} {r['usage']}")
            check(f"restored={c['restored']};" in h.get("x-heed-cache", ""), f"x-heed-cache: {h.get('x-heed-cache')!r}")
            return content_of(r), c

        a0, c = ask(srv, a_text)
        check(c["restored"] == 0, f"a cold prompt restored {c['restored']}")
        ask(srv, b_text)  # --cache-entries 1: a's sequence is evicted, its full blocks written
        a1, c = ask(srv, a_text)
        whole = (n_a - 1) // bl * bl
        print(f"  prompt of {n_a} tokens, blocks of {bl}: restored {c['restored']} after an eviction")
        check(c["restored"] == whole and c["match"]["source"] == "disk",
              f"after an eviction: restored {c['restored']} of the {whole} tokens in whole blocks: {c}")
        check(a1 == a0, f"restored output differs: {a1!r} vs cold {a0!r}")
        ms = get_metrics(srv)
        check((metric(ms, "heed_cache_disk_blocks_total", event="read") or 0) >= whole // bl,
              "heed_cache_disk_blocks_total{event=read} did not count the blocks")
        check((metric(ms, "heed_cache_prompt_tokens_total", how="restored") or 0) == whole,
              "heed_cache_prompt_tokens_total{how=restored}")
        st, _, lst = http_json(srv, "GET", "/v1/cache")
        check(st == 200 and lst.get("disk", {}).get("blocks", 0) >= 2 * whole // bl, f"GET /v1/cache disk: {lst.get('disk')}")
        rc, secs, why = srv.stop()
        check(rc == 0 and not why, f"disk: stop: {rc} {why}")
        # a restart: b was cached in memory at the stop, so its blocks went to disk then
        sub = [os.path.join(tmp, d) for d in os.listdir(tmp)]
        check(len(sub) == 1, f"one subfolder for the model: {sub}")
        files = sorted(os.listdir(sub[0]))
        with open(os.path.join(sub[0], "0123456789abcdef.kvb"), "wb") as f:
            f.write(b"not a block at all")
        srv = start_server(servers, "disk (restart)", heed, gemma, args)
        if not srv:
            return
        check(not os.path.exists(os.path.join(sub[0], "0123456789abcdef.kvb")), "a foreign file survived the start")
        b1, c = ask(srv, b_text)
        n_b = c["prompt_tokens"]
        check(c["restored"] == (n_b - 1) // bl * bl, f"after a restart: restored {c['restored']} of {n_b}: {c}")
        rc, secs, why = srv.stop()
        # a flipped byte in every one of a's files: read, found out, deleted, recomputed
        for name in files:
            p = os.path.join(sub[0], name)
            with open(p, "r+b") as f:
                f.seek(-100, os.SEEK_END)
                x = f.read(1)
                f.seek(-100, os.SEEK_END)
                f.write(bytes([x[0] ^ 0x20]))
        srv = start_server(servers, "disk (corrupt)", heed, gemma, args)
        if not srv:
            return
        a2, c = ask(srv, a_text)
        ms = get_metrics(srv)
        bad = metric(ms, "heed_cache_disk_blocks_total", event="deleted_bad") or 0
        print(f"  flipped bytes: restored {c['restored']}, {bad:.0f} files deleted as bad")
        check(c["restored"] == 0 and bad >= 1 and a2 == a0,
              f"corrupt files: restored {c['restored']}, deleted {bad}, output {a2!r} vs {a0!r}")
        run_test("shutdown (disk)", test_shutdown, srv)
        # a folder that cannot be made (a file is in the way): a warning, and serving from memory
        blocker = os.path.join(tmp, "a-file")
        with open(blocker, "w") as f:
            f.write("x")
        srv = start_server(servers, "disk (unwritable)", heed, gemma,
                           ["--slots", "1", "--ctx", str(CTX), "--cache-dir", os.path.join(blocker, "sub")])
        if not srv:
            return
        check(any("warning: no disk tier" in line for line in srv.tail(50)), f"no warning: {srv.tail(5)}")
        a3, c = ask(srv, a_text)
        check(a3 == a0 and c["restored"] == 0, f"unwritable folder: {a3!r} {c}")
        run_test("shutdown (disk, unwritable)", test_shutdown, srv)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------- main ----------


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    heed = os.path.abspath(sys.argv[1])
    gemma, qwen = os.path.join(MODELS, GEMMA), os.path.join(MODELS, QWEN)
    if not os.path.exists(gemma):
        why = ""
        try:
            with open(os.path.join(MODELS, "FETCH_FAILED")) as f:
                why = ": " + f.read().strip()
        except OSError:
            pass
        print(f"serve: SKIPPED: {gemma} is absent{why}")
        return 77
    # The SDKs' HTTP clients must not send 127.0.0.1 through a proxy.
    for var in ("NO_PROXY", "no_proxy"):
        os.environ[var] = ",".join(x for x in (os.environ.get(var), "127.0.0.1", "localhost") if x)

    servers, state = [], {}
    t_start = time.monotonic()
    try:
        srv = start_server(servers, "main", heed, gemma, ["--slots", "4", "--ctx", str(CTX), "--timeout",
                                                          str(TIMEOUT_S), "--max-body", "1M", "--queue", "32"], key=KEY)
        if srv:
            run_test("basics", test_basics, srv)
            run_test("openai SDK", test_openai_sdk, srv)
            run_test("anthropic SDK", test_anthropic_sdk, srv)
            run_test("SDK errors", test_sdk_errors, srv)
            run_test("bad input", test_bad_input, srv)
            run_test("big bodies", test_big_bodies, srv)
            run_test("slow client", test_slow_client, srv)
            run_test("concurrency and metrics", test_concurrency, srv)
            run_test("prefix cache", test_prefix_cache, srv, state)
            run_test("cancellation", test_cancel, srv)
            run_test("cache report", test_cache_report, srv)
            run_test("sharing a running request's prefix", test_running_share, srv)
            run_test("shutdown (main)", test_shutdown, srv)

        srv = start_server(servers, "strict", heed, gemma, ["--strict-model", "--slots", "1", "--queue", "1",
                                                            "--ctx", str(CTX)])
        if srv:
            run_test("prefix cache, cold", test_prefix_cold, srv, state)
            run_test("chunk reuse", test_chunk_reuse, srv)
            run_test("strict model", test_strict_model, srv)
            run_test("rate limit", test_rate_limit, srv)
            run_test("shutdown (strict)", test_shutdown, srv)

        srv = start_server(servers, "patient", heed, gemma, ["--slots", "1", "--queue", "2", "--timeout", "1",
                                                             "--ctx", str(CTX), "--api-key", "key-two"], key="key-one")
        if srv:
            srv.other_key = "key-two"
            run_test("long waits", test_long_waits, srv)
            run_test("tenants", test_tenants, srv)
            run_test("shutdown (patient)", test_shutdown, srv)

        srv = start_server(servers, "sessions", heed, gemma, ["--slots", "1", "--ctx", "1024", "--cache-mem", "10M",
                                                              "--cache-entries", "4"])
        if srv:
            run_test("sessions", test_sessions, srv)
            run_test("shutdown (sessions)", test_shutdown, srv)

        run_test("disk tier", test_disk_tier, heed, gemma, servers)

        if os.environ.get("HEED_SERVE_QWEN", "1") == "0":
            print("tool calls: SKIPPED: HEED_SERVE_QWEN=0")
        elif not os.path.exists(qwen):
            print(f"tool calls: SKIPPED: {qwen} is absent")
        else:
            srv = start_server(servers, "qwen", heed, qwen, ["--slots", "1", "--ctx", "4096"])
            if srv:
                run_test("tool calls", test_tool_calls, srv)
                run_test("shutdown (qwen)", test_shutdown, srv)
    finally:
        for srv in servers:
            if not srv.stopped:
                run_test(f"shutdown ({srv.name})", test_shutdown, srv)

    print(f"serve: {time.monotonic() - t_start:.0f} s")
    if FAILURES:
        for srv in servers:
            print(f"--- the last lines of {srv.name}'s stderr ({' '.join(srv.cmd)}):")
            for line in srv.tail():
                print(f"    {line}")
        print(f"serve: {len(FAILURES)} FAILED:")
        for test, msg in FAILURES:
            print(f"  {test}: {msg.splitlines()[0] if msg else msg}")
        return 1
    print("serve: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
