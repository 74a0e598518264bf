-- wrk script: POST /sales/<sale>/purchase with a different user id per
-- request, so that the per-user limit never answers and every request
-- reaches the stock. Set the sale with SALE (default "bench").
local sale = os.getenv("SALE") or "bench"
local counter = 0
local thread_id = 0

function setup(thread)
  thread:set("thread_id", thread_id)
  thread_id = thread_id + 1
end

function init(args)
  wrk.method = "POST"
  wrk.path = "/sales/" .. sale .. "/purchase"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local body = string.format('{"user_id":"u%d-%d","quantity":1}', thread_id, counter)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  io.write(string.format("status-summary requests=%d p50_us=%d p99_us=%d\n",
    summary.requests, latency:percentile(50), latency:percentile(99)))
end
