-- wrk script: the same POST body on every request (the sold-out path: a
-- sold-out sale answers 410 to all). Set the sale with SALE.
local sale = os.getenv("SALE") or "bench"
wrk.method = "POST"
wrk.path = "/sales/" .. sale .. "/purchase"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"user_id":"late-buyer","quantity":1}'

function done(summary, latency, requests)
  io.write(string.format("status-summary requests=%d p50_us=%d p99_us=%d\n",
    summary.requests, latency:percentile(50), latency:percentile(99)))
end
