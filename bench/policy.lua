-- bench/policy.lua: wrk script for the customer-insurance routes (bench/run policy).
--
-- Script arguments (after `--` on the wrk command line):
--   path=P     the request path; `{id}` in it is replaced per request by a random id from `ids`
--   ids=A-B    the id range for `{id}` (default 1-1)
--   expect=N   the expected status (default 200); every other status is counted and reported
--              by done() as `non-N responses: M`, with a line per status
--
-- Usage: wrk -t1 -c32 -d10s -s bench/policy.lua http://127.0.0.1:18280 -- \
--            path=/customer_insurance/policy_detail/3/

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function init(args)
  path = "/"
  lo, hi = 1, 1
  expect = 200
  for _, a in ipairs(args) do
    local k, v = a:match("^([^=]+)=(.*)$")
    if k == "path" then
      path = v
    elseif k == "ids" then
      local a1, b1 = v:match("^(%d+)-(%d+)$")
      lo, hi = tonumber(a1), tonumber(b1)
    elseif k == "expect" then
      expect = tonumber(v)
    end
  end
  templated = path:find("{id}", 1, true) ~= nil
  math.randomseed(os.time())
  statuses = {}
  bad = 0
  responses = 0
  first_bad = nil
end

function request()
  if templated then
    local p = path:gsub("{id}", tostring(math.random(lo, hi)))
    return wrk.format("GET", p)
  end
  return wrk.format("GET", path)
end

function response(status, headers, body)
  responses = responses + 1
  if status ~= expect then
    bad = bad + 1
    statuses[status] = (statuses[status] or 0) + 1
    if not first_bad then
      first_bad = status .. " " .. (body or ""):sub(1, 300)
    end
  end
end

function done(summary, latency, requests)
  local total_bad, total_seen, by_status, sample = 0, 0, {}, nil
  local expected = 200
  for _, t in ipairs(threads) do
    total_bad = total_bad + (t:get("bad") or 0)
    total_seen = total_seen + (t:get("responses") or 0)
    expected = t:get("expect") or expected
    for status, n in pairs(t:get("statuses") or {}) do
      by_status[status] = (by_status[status] or 0) + n
    end
    sample = sample or t:get("first_bad")
  end
  io.write(string.format("responses seen by script: %d\n", total_seen))
  io.write(string.format("non-%d responses: %d\n", expected, total_bad))
  for status, n in pairs(by_status) do
    io.write(string.format("  status %s: %d\n", tostring(status), n))
  end
  if sample then
    io.write("  first unexpected: " .. sample .. "\n")
  end
end
