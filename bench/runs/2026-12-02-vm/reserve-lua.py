# reserve.lua alone on a redis-server: N calls of 128 unkeyed reservations
# (tracked, one user each) per script given, EVALSHA time per order from INFO
# commandstats. Usage: python3 reserve-lua.py PORT SCRIPT.lua [SCRIPT.lua ...]
import socket, sys, time
port = int(sys.argv[1]); scripts = sys.argv[2:]
s = socket.create_connection(("127.0.0.1", port)); f = s.makefile("rb")
def cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    s.sendall(out); return read()
def read():
    line = f.readline()
    t, rest = line[:1], line[1:-2]
    if t == b"+" or t == b"-": return rest
    if t == b":": return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0: return None
        d = f.read(n + 2); return d[:-2]
    if t == b"*":
        n = int(rest); return None if n < 0 else [read() for _ in range(n)]
shas = [cmd("SCRIPT", "LOAD", open(p).read()).decode() for p in scripts]
N, BATCH = 40, 128
for si, sha in enumerate(shas):
    sale = f"b{si}"
    k = lambda x: f"sk:{{{sale}}}:{x}"
    cmd("HSET", k("spec"), "switch", "live", "per_user_limit", 1, "starts_at", 0, "ends_at", 0)
    cmd("HSET", k("leases"), "1", 10**9)
    cmd("CONFIG", "RESETSTAT")
    now = int(time.time())
    for b in range(N):
        keys = [k(x) for x in ("spec","pool","sold","leases","users","idem","orders","due","unlogged","idem_due")]
        args = ["1", "1", "60", "86400"]
        for i in range(BATCH):
            oid = f"1-{b}-{i}-{sale}"
            keys.append(k("gone:" + oid))
            args += [oid, f"user{b}-{i}", "1", "", "0123456789abcdef", str(now + 900), "0"]
        r = cmd("EVALSHA", sha, len(keys), *keys, *args)
        assert r[0] == [b"reserved"], r[:2]
    stats = cmd("INFO", "commandstats").decode()
    for line in stats.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            usec = int(line.split("usec=")[1].split(",")[0])
            print(f"{scripts[si]}: {usec / (N * BATCH):.2f} µs per order ({BATCH} per call, {N} calls)")
