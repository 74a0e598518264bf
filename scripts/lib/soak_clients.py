#!/usr/bin/env python3
"""The soak's small clients and its audit of the stock authority's side
(scripts/soak.sh), standard library only.

  payer   buyers p<seed>-<n> who buy with an Idempotency-Key, retry it on a
          503 or a lost connection (on another node), then pay, cancel or
          leave their order to expire; records every order answered 200
          (payer-acked-<seed>.txt), the orders it cancelled
          (payer-cancelled-<seed>.txt) and what it saw (payer-<seed>.json):
          a retry answered with another order is a finding
  slow    hostile but legal clients: a request sent a byte a second
          (slowloris), a client that pipelines requests and never reads;
          counts how the nodes end them (slow.json)
  fuzz    mutated and garbage requests (bytes flipped, cut, repeated;
          oversized headers and bodies, chunked bodies, bad lengths,
          binary); any 5xx other than 503, or a malformed answer, is a
          finding (fuzz.json)
  redis   the audit of Redis at rest: every order ended, no stranded stock
          (pool + leases + sold == stock, sold == units of reserved and paid
          orders), no order answered 200 later released; prints one line
          per check and writes redis-audit.json
  orders  the same per-order checks against a node's API (embedded mode)
  probe   after the audit of Redis: a purchase on every node while units
          are left (a 410 is a false sold-out; probe.json)
  report  the soak's table from the files above, the harness's run record,
          faults.log and rss.log; exit status 1 on any FAIL

Every client stops at --until (Unix time) and writes its record to --out.
"""

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time


# ---------------------------------------------------------------- HTTP ----

class Conn:
    """One keep-alive HTTP/1.1 connection to a node; reconnects on failure."""

    def __init__(self, hostport, timeout=3.0):
        host, port = hostport.replace("http://", "").rstrip("/").split(":")
        self.addr = (host, int(port))
        self.timeout = timeout
        self.sock = None
        self.buf = b""

    def close(self):
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock, self.buf = None, b""

    def request(self, method, path, body=None, headers=None):
        """(status, json body or None, headers dict); raises OSError."""
        if self.sock is None:
            self.sock = socket.create_connection(self.addr, timeout=self.timeout)
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: soak\r\nContent-Length: {len(data)}\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        try:
            self.sock.sendall(head.encode() + b"\r\n" + data)
            return self._read()
        except OSError:
            self.close()
            raise

    def _read(self):
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by server")
            self.buf += chunk
        head, rest = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(rest) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed mid-body")
            rest += chunk
        body, self.buf = rest[:n], rest[n:]
        if headers.get("connection") == "close":
            self.close()
        try:
            return status, json.loads(body) if body else None, headers
        except ValueError:
            return status, None, headers


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)


# --------------------------------------------------------------- payer ----

def payer(a):
    rng = random.Random(a.seed)
    conns = [Conn(t) for t in a.targets.split(",")]
    admin = {"Authorization": f"Bearer {a.token}"}
    seen = {"purchases": 0, "acked": 0, "replays": 0, "paid": 0, "cancelled": 0,
            "left_to_expire": 0, "retries": 0, "gave_up": 0, "by_status": {},
            "findings": []}
    acked = open(os.path.join(a.out, f"payer-acked-{a.seed}.txt"), "w")
    cancelled = open(os.path.join(a.out, f"payer-cancelled-{a.seed}.txt"), "w")
    held = []  # (user, key, order_id) answered 200, to retry later
    n = 0
    while time.time() < a.until:
        n += 1
        user, key = f"p{a.seed}-{n}", f"p{a.seed}-{n}-k"
        body = {"user_id": user, "quantity": 1}
        order = None
        for attempt in range(8):
            conn = conns[(n + attempt) % len(conns)]
            seen["purchases"] += 1
            try:
                status, reply, headers = conn.request(
                    "POST", f"/sales/{a.sale}/purchase", body, {"Idempotency-Key": key})
            except OSError:
                seen["retries"] += 1
                time.sleep(0.2)
                continue
            seen["by_status"][str(status)] = seen["by_status"].get(str(status), 0) + 1
            if status == 200:
                order = reply["order_id"]
                if headers.get("idempotent-replayed") == "true":
                    seen["replays"] += 1
                break
            if status == 503:
                seen["retries"] += 1
                time.sleep(0.2)
                continue
            break  # 410, 403, 409: an answer
        else:
            seen["gave_up"] += 1
        if order is not None:
            seen["acked"] += 1
            acked.write(order + "\n")
            acked.flush()
            held.append((user, key, order))
            r = rng.random()
            path = None
            if r < a.pay_share:
                path, what = f"/orders/{order}/pay", "paid"
            elif r < a.pay_share + a.cancel_share:
                path, what = f"/orders/{order}/cancel", "cancelled"
            if path:
                # Written first: a cancel whose answer is lost may still
                # have happened.
                if what == "cancelled":
                    cancelled.write(order + "\n")
                    cancelled.flush()
                for attempt in range(8):
                    try:
                        status, _, _ = conns[(n + attempt) % len(conns)].request(
                            "POST", path, None, admin)
                    except OSError:
                        time.sleep(0.2)
                        continue
                    if status == 503:
                        time.sleep(0.2)
                        continue
                    if status == 200:
                        seen[what] += 1
                    break
            else:
                seen["left_to_expire"] += 1
        # A retry of an earlier purchase, on another node: the same order.
        if held and rng.random() < 0.3:
            user, key, first = rng.choice(held)
            conn = conns[rng.randrange(len(conns))]
            try:
                status, reply, _ = conn.request(
                    "POST", f"/sales/{a.sale}/purchase", {"user_id": user, "quantity": 1},
                    {"Idempotency-Key": key})
                seen["purchases"] += 1
                seen["by_status"][str(status)] = seen["by_status"].get(str(status), 0) + 1
                if status == 200 and reply["order_id"] != first:
                    seen["findings"].append(
                        f"key {key}: replay answered order {reply['order_id']}, first {first}")
                elif status not in (200, 503) and len(seen["findings"]) < 50:
                    seen["findings"].append(
                        f"key {key}: a retry of order {first} answered {status} {reply}")
            except OSError:
                pass
        time.sleep(a.pause)
    acked.close()
    cancelled.close()
    write_json(os.path.join(a.out, f"payer-{a.seed}.json"), seen)


# ---------------------------------------------------------------- slow ----

def slow(a):
    """Slowloris and never-reading clients; light by design."""
    targets = a.targets.split(",")
    seen = {"slowloris_started": 0, "slowloris_closed_by_node": 0,
            "nonreader_started": 0, "nonreader_closed_by_node": 0,
            "nonreader_bytes_sent": 0}
    request = (f"POST /sales/{a.sale}/purchase HTTP/1.1\r\nHost: soak\r\n"
               "Content-Length: 30\r\n\r\n{\"user_id\":\"slow\",\"quantity\":1}").encode()
    while time.time() < a.until:
        t = random.choice(targets).replace("http://", "")
        host, port = t.split(":")
        socks = []
        for kind in ("slowloris", "nonreader"):
            try:
                s = socket.create_connection((host, int(port)), timeout=2)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.setblocking(False)
                socks.append((kind, s))
                seen[f"{kind}_started"] += 1
            except OSError:
                pass
        # About 25 s of each: longer than the node's request and write
        # timeouts (10 s by default), so the node must be the one to close.
        end_full = time.time() + 25
        end = min(a.until, end_full)
        i = 0
        while time.time() < end and socks:
            for kind, s in list(socks):
                try:
                    if kind == "slowloris":
                        s.send(request[i % len(request):i % len(request) + 1])
                        if s.recv(1) == b"":
                            raise ConnectionError
                    else:
                        # Pipelined GET /metrics (large answers), never read.
                        n = s.send(b"GET /metrics HTTP/1.1\r\nHost: soak\r\n\r\n" * 64)
                        seen["nonreader_bytes_sent"] += n
                except BlockingIOError:
                    continue
                except OSError:
                    seen[f"{kind}_closed_by_node"] += 1
                    socks.remove((kind, s))
                    s.close()
            i += 1
            time.sleep(1)
        for kind, s in socks:
            s.close()
            if time.time() < end_full:
                # Cut short by the end of the soak, not closed by the node:
                # not counted either way.
                seen[f"{kind}_started"] -= 1
    write_json(os.path.join(a.out, "slow.json"), seen)


# ---------------------------------------------------------------- fuzz ----

def mutations(rng, sale):
    valid = (f"POST /sales/{sale}/purchase HTTP/1.1\r\nHost: soak\r\n"
             "Content-Type: application/json\r\nContent-Length: 34\r\n\r\n"
             "{\"user_id\":\"fuzz-1\",\"quantity\":1}").encode()
    kind = rng.randrange(10)
    if kind == 0:
        b = bytearray(valid)
        for _ in range(rng.randrange(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return "flipped", bytes(b)
    if kind == 1:
        return "cut", valid[:rng.randrange(len(valid))] + b"\r\n\r\n"
    if kind == 2:
        return "garbage", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    if kind == 3:
        return "huge_header", (b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * rng.choice([8000, 9000, 70000]) + b"\r\n\r\n")
    if kind == 4:
        return "huge_length", (f"POST /sales/{sale}/purchase HTTP/1.1\r\nContent-Length: {rng.choice([16385, 10**9, 10**13, 2**64])}\r\n\r\n").encode()
    if kind == 5:
        return "chunked", (f"POST /sales/{sale}/purchase HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                           "22\r\n{\"user_id\":\"fuzz-2\",\"quantity\":1}\r\n0\r\n\r\n").encode()
    if kind == 6:
        body = rng.choice([b"{\"user_id\":\"fuzz-3\",\"quantity\":-1}", b"{\"user_id\":\"\",\"quantity\":1}",
                           b"{\"user_id\":\"" + b"x" * 70 + b"\"}", b"[1,2,3]", b"{\"quantity\":1e309}",
                           b"{\"user_id\":\"a\\u0000b\"}", b"\xff\xfe{}", b"{" * 5000])
        return "bad_body", (f"POST /sales/{sale}/purchase HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    if kind == 7:
        return "bad_key", (f"POST /sales/{sale}/purchase HTTP/1.1\r\nIdempotency-Key: {'k' * rng.choice([0, 65, 200])}\r\n"
                           "Content-Length: 26\r\n\r\n{\"user_id\":\"fuzz-4\"}     ").encode()
    if kind == 8:
        return "conflicting_length", (f"POST /sales/{sale}/purchase HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}").encode()
    path = rng.choice(["/admin/sales/x", "/orders/../../etc/passwd", "/sales/%00/purchase",
                       "/orders/1/pay", "/sales/" + "s" * 5000, "*"])
    return "odd_path", f"{rng.choice(['GET', 'POST', 'PUT', 'DELETE', 'FOO'])} {path} HTTP/1.1\r\nContent-Length: 0\r\n\r\n".encode()


def fuzz(a):
    rng = random.Random(a.seed)
    targets = a.targets.split(",")
    seen = {"sent": 0, "answers": {}, "no_answer": 0, "findings": []}
    while time.time() < a.until:
        kind, raw = mutations(rng, a.sale)
        t = rng.choice(targets).replace("http://", "")
        host, port = t.split(":")
        try:
            s = socket.create_connection((host, int(port)), timeout=2)
        except OSError:
            time.sleep(0.2)
            continue
        seen["sent"] += 1
        try:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except OSError:
            pass
        finally:
            s.close()
        if not reply:
            seen["no_answer"] += 1
        elif not reply.startswith(b"HTTP/1.1 "):
            seen["findings"].append(f"{kind}: a malformed answer {reply[:40]!r}")
        else:
            status = int(reply[9:12])
            key = f"{kind} {status}"
            seen["answers"][key] = seen["answers"].get(key, 0) + 1
            if status >= 500 and status != 503 and len(seen["findings"]) < 50:
                seen["findings"].append(f"{kind}: {status} for {raw[:80]!r}")
        time.sleep(a.pause)
    write_json(os.path.join(a.out, "fuzz.json"), seen)


# --------------------------------------------------------------- audit ----

def lines(path):
    try:
        with open(path) as f:
            return [l.strip() for l in f if l.strip()]
    except FileNotFoundError:
        return []


def check(name, ok, count, detail):
    return {"name": name, "verdict": "PASS" if ok else "FAIL", "count": count, "detail": detail}


def per_order_checks(status_of, acked, cancelled):
    """Checks on the orders the soak's clients were answered 200 for."""
    missing = [o for o in acked if status_of.get(o) is None]
    taken = [o for o in acked if status_of.get(o) == "cancelled" and o not in cancelled]
    return [
        check("acked_orders_recorded", not missing, len(missing),
              f"{len(missing)} of {len(acked)} orders answered 200 unknown to the authority"
              + (f" (e.g. {', '.join(missing[:3])})" if missing else "")),
        check("no_200_released", not taken, len(taken),
              f"{len(taken)} of {len(acked)} orders answered 200 read cancelled without a cancel by the soak"
              + (f" (e.g. {', '.join(taken[:3])})" if taken else "")),
    ]


def redis_audit(a):
    def cli(*args):
        out = subprocess.run(["redis-cli", "-p", str(a.redis_port), "--raw", *args],
                             check=True, capture_output=True, text=True).stdout
        return out.splitlines()

    def pairs(xs):
        return dict(zip(xs[0::2], xs[1::2]))

    k = f"sk:{{{a.sale}}}:"
    spec = pairs(cli("HGETALL", k + "spec"))
    stock = int(spec.get("stock", "0"))
    pool = int((cli("GET", k + "pool") or ["0"])[0] or 0)
    sold = int((cli("GET", k + "sold") or ["0"])[0] or 0)
    leases = {n: int(v) for n, v in pairs(cli("HGETALL", k + "leases")).items()}
    orders = {oid: json.loads(raw) for oid, raw in pairs(cli("HGETALL", k + "orders")).items()}
    due = int(cli("ZCARD", k + "due")[0])
    unlogged = int(cli("ZCARD", k + "unlogged")[0])
    by_status, live_units = {}, 0
    for o in orders.values():
        st = o.get("status")
        by_status[st] = by_status.get(st, 0) + 1
        if st in ("reserved", "paid"):
            live_units += int(o.get("quantity", 1))
    acked = set(x for f in a.acked for x in lines(f))
    cancelled = set(x for f in a.cancelled for x in lines(f))
    status_of = {oid: o.get("status") for oid, o in orders.items()}
    reserved = by_status.get("reserved", 0)
    held = pool + sum(leases.values()) + sold
    checks = [
        check("compensation_complete", reserved == 0 and due == 0, reserved,
              f"orders by status {by_status}; {due} in the expiry queue"),
        check("log_caught_up", unlogged == 0, unlogged,
              f"{unlogged} order changes not yet seen in the order log (settler)"),
        check("no_stranded_stock", held == stock and sold == live_units, abs(stock - held),
              f"stock {stock}: pool {pool} + leases {sum(leases.values())} {leases} + sold {sold} = {held}; "
              f"units in reserved+paid orders {live_units}"),
        check("no_oversell_at_rest", sold <= stock and live_units <= stock, max(0, live_units - stock),
              f"sold {sold}, live units {live_units}, stock {stock}"),
    ] + per_order_checks(status_of, acked, cancelled)
    report(a, checks, {"stock": stock, "pool": pool, "sold": sold, "leases": leases,
                       "orders": len(orders), "by_status": by_status})


def orders_audit(a):
    """Embedded mode: the per-order checks through the node's API."""
    conn = Conn(a.targets.split(",")[0], timeout=5)
    admin = {"Authorization": f"Bearer {a.token}"}
    acked = set(x for f in a.acked for x in lines(f))
    cancelled = set(x for f in a.cancelled for x in lines(f))
    status_of, by_status = {}, {}
    for oid in sorted(acked):
        for _ in range(3):
            try:
                status, reply, _ = conn.request("GET", f"/orders/{oid}", None, admin)
                break
            except OSError:
                time.sleep(0.5)
        else:
            continue
        if status == 200:
            status_of[oid] = reply["status"]
            by_status[reply["status"]] = by_status.get(reply["status"], 0) + 1
    reserved = by_status.get("reserved", 0)
    _, sale, _ = conn.request("GET", f"/sales/{a.sale}", None, admin)
    checks = [check("compensation_complete", reserved == 0, reserved,
                    f"acknowledged orders by status {by_status}")]
    checks += per_order_checks(status_of, acked, cancelled)
    report(a, checks, {"sale": sale, "by_status": by_status})


def probe(a):
    """At rest, units back in the pool: every node must sell one of them
    (a 410 here is a false sold-out)."""
    side = load(os.path.join(a.out, a.name), {}) or {}
    facts = side.get("facts", {})
    left = facts.get("pool", 0) + sum((facts.get("leases") or {}).values())
    answers = {}
    for i, t in enumerate(a.targets.split(",")):
        conn = Conn(t, timeout=5)
        status = None
        for attempt in range(5):
            try:
                status, _, _ = conn.request("POST", f"/sales/{a.sale}/purchase",
                                            {"user_id": f"probe-{i}", "quantity": 1},
                                            {"Idempotency-Key": f"probe-{i}"})
            except OSError:
                time.sleep(0.5)
                continue
            if status != 503:
                break
            time.sleep(0.5)
        answers[t] = status
    write_json(os.path.join(a.out, "probe.json"), {"units_left": left, "answers": answers})


def report(a, checks, facts):
    for c in checks:
        print(f"{c['verdict']} {c['name']} ({c['count']}): {c['detail']}")
    write_json(os.path.join(a.out, a.name), {"checks": checks, "facts": facts})


# -------------------------------------------------------------- report ----

def load(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return default


def table(a):
    work = a.out
    rows = []  # (section, name, value)
    faults = {}
    for line in lines(os.path.join(work, "faults.log")):
        kind = line.split()[1]
        faults[kind] = faults.get(kind, 0) + 1
    for kind in sorted(faults):
        rows.append(("fault", kind, str(faults[kind])))
    record = load(a.record, {}) or {}
    summary = record.get("summary") or {}
    rows.append(("load", "harness requests sent", str(summary.get("sent", "?"))))
    rows.append(("load", "harness answers", str(summary.get("completed", "?"))))
    rows.append(("load", "harness 200s (orders + replays)",
                 f"{summary.get('orders_acked', '?')} + {summary.get('replays_acked', '?')}"))
    rows.append(("load", "harness transport errors / timeouts",
                 f"{summary.get('io_errors', '?')} / {summary.get('timeouts', '?')}"))
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted((summary.get("by_status") or {}).items()))
    rows.append(("load", "harness answers by status", statuses or "?"))
    payer_seen = {"findings": []}
    for f in sorted(os.listdir(work)):
        if f.startswith("payer-") and f.endswith(".json"):
            for k, v in (load(os.path.join(work, f), {}) or {}).items():
                if isinstance(v, (int, list)):
                    payer_seen[k] = payer_seen.get(k, 0 if isinstance(v, int) else []) + v
    rows.append(("load", "payer purchases / 200s / paid / cancelled / left to expire",
                 " / ".join(str(payer_seen.get(k, "?")) for k in
                            ("purchases", "acked", "paid", "cancelled", "left_to_expire"))))
    fuzz_seen = load(os.path.join(work, "fuzz.json"), {}) or {}
    rows.append(("load", "fuzz requests (answered / no answer)",
                 f"{fuzz_seen.get('sent', '?')} ({sum((fuzz_seen.get('answers') or {}).values())} / "
                 f"{fuzz_seen.get('no_answer', '?')})"))
    slow_seen = load(os.path.join(work, "slow.json"), {}) or {}
    rows.append(("load", "slowloris / non-readers started (closed by node)",
                 f"{slow_seen.get('slowloris_started', '?')} ({slow_seen.get('slowloris_closed_by_node', '?')}) / "
                 f"{slow_seen.get('nonreader_started', '?')} ({slow_seen.get('nonreader_closed_by_node', '?')})"))
    rss = [int(x.split()[1]) for x in lines(os.path.join(work, "rss.log"))]
    rows.append(("load", "peak node RSS", f"{max(rss) // 1024} MiB" if rss else "?"))
    checks = []
    if not record:
        checks.append({"name": "harness_ran", "verdict": "FAIL", "count": 1,
                       "detail": f"no run record at {a.record}"})
    for c in record.get("audit") or []:
        checks.append({"name": "log: " + c["name"], "verdict": c["verdict"], "count": "",
                       "detail": c["detail"]})
    side = load(os.path.join(work, a.name), None)
    if side is None:
        checks.append({"name": "authority_audit_ran", "verdict": "FAIL", "count": 1,
                       "detail": f"no {a.name}"})
    else:
        for c in side["checks"]:
            checks.append(dict(c, name="authority: " + c["name"]))
    pf = payer_seen.get("findings", [])
    checks.append(check("clients: retries get their first order", not pf, len(pf),
                        "; ".join(pf[:3]) or "every retry of a 200 named the same order"))
    ff = fuzz_seen.get("findings", [])
    checks.append(check("clients: no 5xx but 503 to garbage", not ff, len(ff),
                        "; ".join(ff[:3]) or "every mutated request got a 4xx, a 200-class or a close"))
    for kind in ("slowloris", "nonreader"):
        started = slow_seen.get(f"{kind}_started", 0)
        closed = slow_seen.get(f"{kind}_closed_by_node", 0)
        checks.append(check(f"clients: {kind} closed by the node", closed >= started, started - closed,
                            f"{closed} of {started} closed by the node within 25 s"))
    pr = load(os.path.join(work, "probe.json"), None)
    if pr is not None:
        false = [t for t, st in pr["answers"].items() if st == 410] if pr["units_left"] > 0 else []
        checks.append(check("cluster: no false sold-out at rest", not false, len(false),
                            f"{pr['units_left']} units unsold; a purchase on each node answered {pr['answers']}"))
    dup = load(os.path.join(work, "duplicate.json"), None)
    if dup is not None:
        checks.append(check("cluster: a duplicate node id refuses to start", not dup["served"],
                            int(dup["served"]),
                            "a second node with node 1's id " +
                            ("started and served" if dup["served"] else "did not start")))
    peak = max(rss) // 1024 if rss else 0
    checks.append(check("bounded memory: peak node RSS", bool(rss) and peak <= a.rss_limit_mb, peak,
                        f"{peak} MiB (limit {a.rss_limit_mb} MiB)"))
    out = [f"# soak {a.title}", "", "| what | value |", "|---|---|"]
    out += [f"| {n} | {v} |" for _, n, v in rows]
    out += ["", "| invariant | verdict | count | detail |", "|---|---|---|---|"]
    out += [f"| {c['name']} | {c['verdict']} | {c['count']} | {c['detail']} |" for c in checks]
    text = "\n".join(out) + "\n"
    print(text)
    with open(a.table, "w") as f:
        f.write(text)
    return 1 if any(c["verdict"] == "FAIL" for c in checks) else 0


# ---------------------------------------------------------------- main ----

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["payer", "slow", "fuzz", "redis", "orders", "probe", "report"])
    p.add_argument("--targets", default="")
    p.add_argument("--sale", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--until", type=float, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pause", type=float, default=0.05)
    p.add_argument("--pay-share", type=float, default=0.5)
    p.add_argument("--cancel-share", type=float, default=0.25)
    p.add_argument("--redis-port", type=int, default=0)
    p.add_argument("--acked", nargs="*", default=[])
    p.add_argument("--cancelled", nargs="*", default=[])
    p.add_argument("--name", default="authority-audit.json")
    p.add_argument("--record", default="")
    p.add_argument("--table", default="")
    p.add_argument("--title", default="")
    p.add_argument("--rss-limit-mb", type=int, default=256)
    a = p.parse_args()
    return {"payer": payer, "slow": slow, "fuzz": fuzz, "redis": redis_audit, "orders": orders_audit,
            "probe": probe, "report": table}[a.what](a)


if __name__ == "__main__":
    sys.exit(main())
