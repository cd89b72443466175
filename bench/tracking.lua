-- bench/tracking.lua: wrk script for GET /api/next-tracking-number/.
--
-- Every request carries a different, valid, realistic order: a random country pair (upper,
-- lower or mixed case), a UUIDv4 customer id (hyphenated or 32 hex digits), a weight between
-- 0.001 and 9999.999 kg with 0-3 decimals, a percent-encoded customer name with spaces (some
-- non-ASCII), a kebab-case slug and an RFC 3339 created_at with a `%2B08:00`-style offset.
--
-- Every response whose status is not 201 is counted (wrk's own "Non-2xx or 3xx" line counts
-- 200 or 204 as fine) and reported by done() as `non-201 responses: N`, with a line per status.
--
-- Script arguments (after `--` on the wrk command line):
--   pool=N   pre-generate N requests per thread in init() and cycle through them instead of
--            building one per request (less client CPU; for checking whether wrk is the limit).
--   seed=N   base seed (default: time); each thread adds its own id.
--
-- Usage: wrk -t1 -c32 -d10s --latency -s bench/tracking.lua http://127.0.0.1:18080 [-- pool=10000]

local PATH = "/api/next-tracking-number/"

local COUNTRIES = {
  "MY", "ID", "SG", "TH", "VN", "PH", "US", "GB", "DE", "FR", "NL", "BE", "ES", "IT",
  "PT", "SE", "NO", "DK", "FI", "PL", "CZ", "AT", "CH", "IE", "AU", "NZ", "JP", "KR",
  "CN", "HK", "TW", "IN", "PK", "BD", "AE", "SA", "TR", "BR", "MX", "CA", "ZA", "EG",
  "NG", "KE", "AR", "CL",
}

-- Words for customer names; some are already percent-encoded UTF-8 (Ü, é, ñ, 株式会社).
local NAME_WORDS = {
  "RedBox", "Logistics", "Kedai", "Runcit", "Ahmad", "Siti", "Express", "Global", "Trading",
  "Sdn", "Bhd", "PT", "Maju", "Jaya", "Nguyen", "Van", "Anh", "Santos", "Cruz", "Smith",
  "Parcel", "Hub", "Store", "Mart", "Fresh", "Farm", "Tech", "Books", "Toys", "Outlet",
  "M%C3%BCller", "Caf%C3%A9", "Pe%C3%B1a", "%E6%A0%AA%E5%BC%8F%E4%BC%9A%E7%A4%BE", "Co.", "%26",
}

local SLUG_WORDS = {
  "redbox", "logistics", "kedai", "runcit", "express", "global", "trading", "maju", "jaya",
  "parcel", "hub", "store", "mart", "fresh", "farm", "tech", "books", "toys", "outlet", "my",
  "sg", "id", "24", "7", "2go", "shop", "online", "official", "co", "asia",
}

-- Offsets of created_at (already percent-encoded where needed).
local OFFSETS = { "%2B08:00", "%2B08:00", "%2B08:00", "%2B07:00", "%2B09:00", "%2B05:30", "-05:00", "Z" }

local random = math.random
local format = string.format
local concat = table.concat
local upper = string.upper

local function pick(t)
  return t[random(#t)]
end

-- Each code in upper case (half the time), lower case and the two mixed cases.
local COUNTRY_FORMS = {}
for _, c in ipairs(COUNTRIES) do
  local a, b = c:sub(1, 1), c:sub(2, 2)
  for _, form in ipairs({ c, c, c, a:lower() .. b:lower(), a:lower() .. b, a .. b:lower() }) do
    COUNTRY_FORMS[#COUNTRY_FORMS + 1] = form
  end
end

local function country()
  return COUNTRY_FORMS[random(#COUNTRY_FORMS)]
end

-- A random UUIDv4: hyphenated (mostly) or 32 bare hex digits, sometimes upper case.
local function uuid()
  local fmt = random(5) > 1 and "%08x-%04x-4%03x-%x%03x-%06x%06x" or "%08x%04x4%03x%x%03x%06x%06x"
  local s = format(fmt, random(0, 0xffffffff), random(0, 0xffff), random(0, 0xfff),
    random(8, 11), random(0, 0xfff), random(0, 0xffffff), random(0, 0xffffff))
  if random(8) == 1 then
    s = upper(s)
  end
  return s
end

-- 0.001 to 9999.999 kg, with 0 to 3 decimals; small parcels are the common case.
local function weight()
  local r = random(10)
  local int
  if r <= 6 then
    int = random(0, 9)
  elseif r <= 9 then
    int = random(0, 999)
  else
    int = random(0, 9999)
  end
  local decimals = random(0, 3)
  local s
  if decimals == 0 then
    s = tostring(int)
  else
    local frac = random(0, 10 ^ decimals - 1)
    s = format("%d.%0" .. decimals .. "d", int, frac)
  end
  if not s:find("[1-9]") then
    s = "0.001"
  end
  return s
end

-- 1 to 4 words separated by encoded spaces (`%20` or `+`).
local function name()
  local n = random(4)
  local p = {}
  for i = 1, n do
    if i > 1 then
      p[#p + 1] = random(2) == 1 and "%20" or "+"
    end
    p[#p + 1] = pick(NAME_WORDS)
  end
  return concat(p)
end

local function slug()
  local n = random(3)
  local p = {}
  for i = 1, n do
    p[i] = pick(SLUG_WORDS)
  end
  return concat(p, "-")
end

local function created_at()
  local s = format("%04d-%02d-%02dT%02d:%02d:%02d", random(2018, 2026), random(12), random(28),
    random(0, 23), random(0, 59), random(0, 59))
  local r = random(3)
  if r == 1 then
    s = s .. format(".%06d", random(0, 999999))
  elseif r == 2 then
    s = s .. format(".%03d", random(0, 999))
  end
  return s .. pick(OFFSETS)
end

-- The request around the path ("GET " and " HTTP/1.1\r\nHost: ...\r\n\r\n"), taken once from
-- wrk.format(), which copies its header table on every call.
local head, tail

local function build()
  if not head then
    local marker = "/__PATH__"
    local req = wrk.format("GET", marker)
    local i = req:find(marker, 1, true)
    head, tail = req:sub(1, i - 1), req:sub(i + #marker)
  end
  return head .. PATH
    .. "?origin_country_id=" .. country()
    .. "&destination_country_id=" .. country()
    .. "&weight=" .. weight()
    .. "&created_at=" .. created_at()
    .. "&customer_id=" .. uuid()
    .. "&customer_name=" .. name()
    .. "&customer_slug=" .. slug()
    .. tail
end

-- Setup phase (main Lua state): give each thread an id and keep it for done().

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("thread_id", #threads)
end

-- Running phase (one Lua state per wrk thread).

local pool = nil
local pool_next = 0

function init(args)
  local seed = os.time()
  local pool_size = 0
  for _, a in ipairs(args) do
    local k, v = a:match("^(%w+)=(%d+)$")
    if k == "seed" then
      seed = tonumber(v)
    elseif k == "pool" then
      pool_size = tonumber(v)
    else
      io.stderr:write("tracking.lua: ignoring argument " .. a .. "\n")
    end
  end
  math.randomseed(seed + (thread_id or 0) * 7919)
  -- LuaJIT's first values after seeding are poorly mixed: discard a few.
  for _ = 1, 10 do
    random()
  end
  statuses = {}
  non201 = 0
  responses = 0
  if pool_size > 0 then
    pool = {}
    for i = 1, pool_size do
      pool[i] = build()
    end
  end
end

function request()
  if pool then
    pool_next = pool_next % #pool + 1
    return pool[pool_next]
  end
  return build()
end

function response(status, headers, body)
  responses = responses + 1
  if status ~= 201 then
    non201 = non201 + 1
    statuses[status] = (statuses[status] or 0) + 1
    if not first_bad then
      first_bad = status .. " " .. (body or "")
    end
  end
end

-- Done phase (main Lua state again): add up the threads' counters.

function done(summary, latency, requests)
  local total_bad, total_seen = 0, 0
  local by_status = {}
  local sample = nil
  for _, t in ipairs(threads) do
    total_bad = total_bad + (t:get("non201") or 0)
    total_seen = total_seen + (t:get("responses") or 0)
    for status, n in pairs(t:get("statuses") or {}) do
      by_status[status] = (by_status[status] or 0) + n
    end
    sample = sample or t:get("first_bad")
  end
  io.write(format("responses seen by script: %d\n", total_seen))
  io.write(format("non-201 responses: %d\n", total_bad))
  for status, n in pairs(by_status) do
    io.write(format("  status %s: %d\n", tostring(status), n))
  end
  if sample then
    io.write("  first non-201: " .. sample:sub(1, 300) .. "\n")
  end
end
