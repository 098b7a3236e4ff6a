-- wrk script for make bench: the request comes from the environment (BENCH_METHOD,
-- BENCH_BODY, BENCH_KEY, BENCH_PREFER; the path is the URL's), and done() prints one JSON
-- line with the figures scripts/bench.sh keeps. No per-request Lua, which would slow wrk.
wrk.method = os.getenv("BENCH_METHOD") or "GET"
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
local prefer = os.getenv("BENCH_PREFER")
if prefer and prefer ~= "" then
  wrk.headers["Prefer"] = prefer
end
local body = os.getenv("BENCH_BODY")
if body and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_s":%.3f,"req_per_s":%.1f,"non_2xx_3xx":%d,"socket_errors":%d,' ..
    '"timeouts":%d,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    e.status, e.connect + e.read + e.write, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
