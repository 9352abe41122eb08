--[[
resilua -- the policy DSL: r.breaker, r.limiter, r.bulkhead, r.policy and its steps,
r.expose.  This file is compiled into the library (cmake/embed.cmake).

policy_load.c loads it once per Lua state (chunk name "=resilua", JIT off), passing `info`: the
outcome vocabulary in the order of RSL_OUTCOMES (so the C side, the Lua side, JSON and
metrics cannot disagree), the limits of policy.h, and `kinds`: the step kinds of the C
side's step table that this file does not know (name -> list of their own fields).  Such
a kind gets its constructor r.NAME; its fields are checked by name here and passed on as
they are, and its C reader (rsl__step_ops.parse) checks their values.  It returns the public module, which
policy files reach through `require "resilua"` as a read-only proxy, and a control table
for C only.

Every declaration is validated when it is made.  A bad one raises error(msg, 0) with
msg = `FILE:LINE: KIND "NAME": message`, FILE:LINE being the declaration in the policy
file.  Step constructors (r.lua, r.stub, ...) only remember their arguments and line: a
step learns its name in r.policy, which validates it then (`policy "p": step "s": ...`
at the step's own line).  After the last file, ctl.finish() checks what spans files
(guards named by steps, policies named by r.expose) and returns every declaration
normalized for C: durations in ns, outcome lists as bit masks (bit i = outcome i),
policies and steps sorted by name.

Policy code cannot reach this module's internals: the public table is proxied, step
declarations are opaque tokens, and settings tables are read (and copied) at declaration
time, so changing them afterwards changes nothing.
]]
local info = ...

local type, pairs, ipairs, tostring, tonumber, error, select, unpack =
    type, pairs, ipairs, tostring, tonumber, error, select, unpack
local setmetatable, getupvalue = setmetatable, debug.getupvalue
local fmt, concat, sort, floor, max = string.format, table.concat, table.sort, math.floor, math.max
local getinfo = debug.getinfo
local bor, lshift = bit.bor, bit.lshift
local jutil = require("jit.util") -- built into LuaJIT: no search path needed

local OUTCOMES = info.outcomes
local OUTCOME = {} -- name -> bit index
for i, name in ipairs(OUTCOMES) do
  OUTCOME[name] = i - 1
end
local MAX_CHAIN = info.max_chain
local MAX_GUARDS = info.max_guards
local LOWEST_PRIORITY = info.lowest_priority -- RSL_PRIORITY_LOWEST (shed.h)
local MAX_TOP_K = info.max_top_k -- RSL_KEYED_TOP_MAX (keyed.h)
local KINDS = info.kinds or {} -- step kinds of the C side's table beyond the ones below

local NS_MS, NS_S = 1e6, 1e9
local WEEK = 7 * 24 * 3600 * NS_S -- the breaker's longest open period (breaker.c)

local function set(list)
  local s = {}
  for _, v in ipairs(list) do
    s[v] = true
  end
  return s
end

-- ---- messages ---------------------------------------------------------------------------

-- The file and line of the policy code that called into the DSL: the first Lua frame of a
-- policy file ("@path"), skipping the DSL's own frames ("=resilua").
local function where()
  local level = 3
  while true do
    local i = getinfo(level, "Sl")
    if not i then
      return "?", 0
    end
    if i.what ~= "C" and i.source:byte(1) == 64 then
      return i.source:sub(2), i.currentline
    end
    level = level + 1
  end
end

local function escape(c)
  if c == '"' then
    return '\\"'
  elseif c == "\\" then
    return "\\\\"
  end
  return fmt("\\%d", c:byte())
end

-- A value as it reads in a message: strings quoted (one line, at most 60 bytes), integers
-- without ".0", other types by name.
local function show(v)
  local t = type(v)
  if t == "string" then
    if #v > 60 then
      v = v:sub(1, 57) .. "..."
    end
    return '"' .. (v:gsub('[%c"\\]', escape)) .. '"'
  elseif t == "number" then
    if v ~= v then
      return "nan"
    elseif v == floor(v) and v > -1e15 and v < 1e15 then
      return fmt("%d", v)
    end
    return fmt("%.14g", v)
  elseif t == "nil" or t == "boolean" then
    return tostring(v)
  end
  return "a " .. t
end

-- ctx = { file =, line =, what = 'breaker "x"' }
local function fail(ctx, msg, ...)
  if select("#", ...) > 0 then
    msg = fmt(msg, ...)
  end
  error(fmt("%s:%d: %s: %s", ctx.file, ctx.line, ctx.what, msg), 0)
end

local function quoted_list(list)
  local q = {}
  for i, v in ipairs(list) do
    q[i] = '"' .. v .. '"'
  end
  return concat(q, ", ")
end

-- ---- field readers ----------------------------------------------------------------------

-- Raises on the first (in sorted order) key of t that is not in `allowed`.
local function check_fields(ctx, t, allowed, prefix)
  local bad
  for k in pairs(t) do
    if type(k) ~= "string" or not allowed[k] then
      local s = type(k) == "string" and fmt('"%s%s"', prefix, k) or "[" .. show(k) .. "]"
      if not bad or s < bad then
        bad = s
      end
    end
  end
  if bad then
    fail(ctx, "unknown field %s", bad)
  end
end

local function is_list(t)
  local n = #t
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k > n or k ~= floor(k) then
      return false
    end
  end
  return true
end

local UNIT = { us = 1e3, ms = NS_MS, s = NS_S, m = 60 * NS_S, h = 3600 * NS_S }

-- "150ms" -> 150000000; nil unless a decimal number directly followed by a unit.
local function parse_duration(v)
  if type(v) ~= "string" then
    return nil
  end
  local num, unit = v:match("^(%d*%.?%d+)(%a+)$")
  local mult = num and UNIT[unit]
  if not mult then
    return nil
  end
  return floor(tonumber(num) * mult + 0.5)
end

-- opt: positive (> 0 required), max (ns) and max_text.
local function duration(ctx, v, name, default, positive, max_ns, max_text)
  if v == nil then
    return default
  end
  local ns = parse_duration(v)
  if not ns then
    fail(ctx, '%s must be a duration like "150ms", got %s', name, show(v))
  end
  if positive and ns <= 0 then
    fail(ctx, "%s must be > 0, got %s", name, show(v))
  end
  if max_ns and ns > max_ns then
    fail(ctx, "%s must be at most %s, got %s", name, max_text, show(v))
  end
  return ns
end

-- A finite number in [lo, hi] (hi nil: no bound; lo_open: > lo), optionally an integer.
local function number(ctx, v, name, default, lo, hi, integer, lo_open)
  if v == nil then
    return default
  end
  local kind = integer and "an integer" or "a number"
  if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then
    fail(ctx, "%s must be %s, got %s", name, kind, show(v))
  end
  if integer and v ~= floor(v) then
    fail(ctx, "%s must be an integer, got %s", name, show(v))
  end
  if (lo_open and v <= lo) or v < lo or (hi and v > hi) then
    if hi then
      fail(ctx, "%s must be in %s..%s, got %s", name, show(lo), show(hi), show(v))
    end
    fail(ctx, "%s must be %s %s, got %s", name, lo_open and ">" or ">=", show(lo), show(v))
  end
  return v
end

local function integer(ctx, v, name, default, lo, hi)
  v = number(ctx, v, name, default, lo, hi, true)
  if v and v > 2 ^ 53 then
    fail(ctx, "%s must be at most 2^53, got %s", name, show(v))
  end
  return v
end

local function percent(ctx, v, name, default)
  return number(ctx, v, name, default, 0, 100)
end

local function enum(ctx, v, name, default, options)
  if v == nil then
    return default
  end
  for _, o in ipairs(options) do
    if v == o then
      return v
    end
  end
  fail(ctx, "%s must be one of %s, got %s", name, quoted_list(options), show(v))
end

-- A list of outcome names -> bit mask.
local function outcomes(ctx, v, name, default, forbidden)
  if v == nil then
    v = default
  end
  if type(v) ~= "table" or not is_list(v) then
    fail(ctx, "%s must be a list of outcomes, got %s", name, show(v))
  end
  local mask = 0
  for i = 1, #v do
    local o = v[i]
    if type(o) ~= "string" or not OUTCOME[o] then
      fail(ctx, "%s: unknown outcome %s (outcomes: %s)", name, show(o), concat(OUTCOMES, ", "))
    end
    if forbidden and forbidden[o] then
      fail(ctx, "%s must not list %s", name, show(o))
    end
    mask = bor(mask, lshift(1, OUTCOME[o]))
  end
  return mask
end

local function string_list(ctx, v, name)
  if type(v) ~= "table" or not is_list(v) then
    fail(ctx, "%s must be a list of names, got %s", name, show(v))
  end
  for i = 1, #v do
    if type(v[i]) ~= "string" then
      fail(ctx, "%s must be a list of names, got %s at position %d", name, show(v[i]), i)
    end
  end
  return v
end

-- ---- declarations -------------------------------------------------------------------

local guards = {}   -- name -> normalized guard (one namespace for all kinds)
local policies = {} -- name -> normalized policy
local exposes = {}  -- "METHOD /path" -> { ... }
local shapes = {}   -- "METHOD /users/:" -> expose (same route, other parameter names)
local pending = {}  -- r.breaker "x" called, its settings table not (yet) given
local tokens = setmetatable({}, { __mode = "k" }) -- step token -> { kind, conf, file, line }
local finished = false

local NAME_PATTERN = "^[%w_.:%-]+$"

local function check_loading(ctx)
  if finished then
    fail(ctx, "declarations are only allowed while the policy files load")
  end
end

-- r.KIND "name" { settings }: `declare(ctx, name, settings)` runs on the settings.
local function named(kind, declare)
  return function(name)
    local file, line = where()
    local ctx = { file = file, line = line, what = kind }
    check_loading(ctx)
    if type(name) ~= "string" or not name:find(NAME_PATTERN) then
      fail(ctx, "name must be a string of letters, digits, '_', '.', ':' and '-', got %s",
           show(name))
    end
    ctx.what = fmt('%s "%s"', kind, name)
    local p = { ctx = ctx }
    pending[#pending + 1] = p
    return function(conf)
      check_loading(ctx)
      if p.done then
        fail(ctx, "settings given twice")
      end
      p.done = true
      if type(conf) ~= "table" then
        fail(ctx, "expected a table of settings, got %s", show(conf))
      end
      declare(ctx, name, conf)
      return name
    end
  end
end

local function claim_guard(ctx, kind, name)
  local prev = guards[name]
  if prev and prev.kind == kind then
    fail(ctx, "already declared at %s:%d", prev.file, prev.line)
  elseif prev then
    fail(ctx, 'name already used by %s "%s" at %s:%d', prev.kind, name, prev.file, prev.line)
  end
end

local BREAKER = set { "window", "buckets", "min_calls", "failure_rate", "slow_call", "slow_rate",
                      "open_for", "backoff", "probes", "count", "shared", "trip",
                      "key", "max_keys", "top_k" }
local TRIP = set { "failure_rate", "latency", "periods", "period", "window", "short_window" }
local TRIP_LATENCY = set { "q", "over", "adapt" }
local TRIP_ADAPT = set { "factor", "max" }

-- trip = { failure_rate, latency = { q, over, adapt = { factor, max } }, periods, period,
-- window, short_window }: the joint trip of trip.h, into d.trip_* fields.
local function trip(ctx, d, t)
  if type(t) ~= "table" then
    fail(ctx, "trip must be a table like { failure_rate = 20, latency = { over = \"800ms\" } }, got %s", show(t))
  end
  check_fields(ctx, t, TRIP, "trip.")
  local l = t.latency or {}
  if type(l) ~= "table" then
    fail(ctx, "trip.latency must be a table, got %s", show(l))
  end
  check_fields(ctx, l, TRIP_LATENCY, "trip.latency.")
  local a = l.adapt
  if a ~= nil and type(a) ~= "table" then
    fail(ctx, "trip.latency.adapt must be a table, got %s", show(a))
  end
  check_fields(ctx, a or {}, TRIP_ADAPT, "trip.latency.adapt.")
  d.trip_periods = integer(ctx, t.periods, "trip.periods", 3, 1, 255)
  d.trip_period_ns = duration(ctx, t.period, "trip.period", NS_S, true)
  d.trip_window_ns = duration(ctx, t.window, "trip.window", 10 * NS_S, true)
  d.trip_short_window_ns = duration(ctx, t.short_window, "trip.short_window",
                                    max(d.trip_period_ns, floor(d.trip_window_ns / d.trip_period_ns / 2) * d.trip_period_ns), true)
  local n = d.trip_window_ns / d.trip_period_ns
  if n ~= floor(n) or n > 60 or d.trip_short_window_ns % d.trip_period_ns ~= 0 or
     d.trip_short_window_ns > d.trip_window_ns then
    fail(ctx, "trip: window and short_window must be multiples of period, at most 60 periods, short_window <= window")
  end
  d.trip_failure_rate = percent(ctx, t.failure_rate, "trip.failure_rate", 20)
  d.trip_q = number(ctx, l.q, "trip.latency.q", 0.9, 0, 1)
  d.trip_over_ns = duration(ctx, l.over, "trip.latency.over", 800 * NS_MS, true)
  d.trip_factor = a and number(ctx, a.factor, "trip.latency.adapt.factor", 1.2, 1) or 0
  d.trip_max_ns = a and duration(ctx, a.max, "trip.latency.adapt.max", max(1500 * NS_MS, d.trip_over_ns), true)
                  or d.trip_over_ns
  if d.trip_max_ns < d.trip_over_ns then
    fail(ctx, "trip.latency.adapt.max must be >= trip.latency.over")
  end
end

local SHARED = set { "quorum", "flush" }

-- shared = { quorum = 2, flush = "100ms" }: the breaker's rule also judges the fleet's
-- counts in Redis (fleet.h), into d.shared_quorum and d.shared_flush_ns.
local function shared(ctx, d, c)
  local s = c.shared
  if s == nil or s == false then
    return
  end
  if type(s) ~= "table" then
    fail(ctx, 'shared must be a table like { quorum = 2, flush = "100ms" }, got %s', show(s))
  end
  check_fields(ctx, s, SHARED, "shared.")
  if c.trip ~= nil then
    fail(ctx, "shared is not available with trip yet: the fleet judges failure_rate and slow_rate")
  end
  if c.key ~= nil then
    fail(ctx, "shared is not available with key yet: the fleet counts one breaker")
  end
  d.shared_quorum = integer(ctx, s.quorum, "shared.quorum", 2, 1, 1000)
  d.shared_flush_ns = duration(ctx, s.flush, "shared.flush", 100 * NS_MS, true, 60 * NS_S, "1m")
end

local template -- below, with the steps

-- key = "${tenant}", max_keys, top_k: one breaker or limiter per key value (keyed.h), at
-- most max_keys of them; metrics name the top_k keys by calls and fold the rest in "other".
local function keyed(ctx, d, c)
  if c.key == nil then
    if c.max_keys ~= nil or c.top_k ~= nil then
      fail(ctx, "max_keys and top_k need key (like key = \"${tenant}\")")
    end
    return
  end
  d.key = template(ctx, c.key, "key", '"${tenant}"')
  if not d.key:find("${", 1, true) then
    fail(ctx, 'key must name a request attribute, like "${tenant}", got %s', show(c.key))
  end
  d.max_keys = integer(ctx, c.max_keys, "max_keys", 10000, 1, 1e7)
  d.top_k = integer(ctx, c.top_k, "top_k", 10, 0, MAX_TOP_K)
end

local BACKOFF = set { "factor", "max", "jitter" }
local COUNT_DEFAULT = { "timeout", "connect", "5xx", "error" }
local NOT_COUNTED = set { "ok", "canceled", "rejected" }

local function breaker(ctx, name, c)
  claim_guard(ctx, "breaker", name)
  check_fields(ctx, c, BREAKER, "")
  local d = { kind = "breaker", name = name, file = ctx.file, line = ctx.line }
  d.window_ns = duration(ctx, c.window, "window", 10 * NS_S, true)
  d.buckets = integer(ctx, c.buckets, "buckets", 10, 1, 120)
  if d.window_ns / d.buckets < NS_MS then
    fail(ctx, "window / buckets must be at least 1ms, got %s / %d", show(c.window or "10s"),
         d.buckets)
  end
  d.min_calls = integer(ctx, c.min_calls, "min_calls", 20, 1)
  -- With a joint trip the plain rules apply only when given.
  local joint = c.trip ~= nil
  d.failure_rate = percent(ctx, c.failure_rate, "failure_rate", joint and 0 or 50)
  d.slow_call_ns = duration(ctx, c.slow_call, "slow_call", 60 * NS_S, true)
  d.slow_rate = percent(ctx, c.slow_rate, "slow_rate", joint and 0 or 100)
  if joint then
    trip(ctx, d, c.trip)
  end
  d.open_for_ns = duration(ctx, c.open_for, "open_for", 5 * NS_S, true, WEEK, "168h")
  local b = c.backoff
  if b == nil then
    b = {}
  elseif type(b) ~= "table" then
    fail(ctx, 'backoff must be a table like { factor = 2, max = "2m", jitter = 0.1 }, got %s',
         show(b))
  end
  check_fields(ctx, b, BACKOFF, "backoff.")
  d.backoff_factor = number(ctx, b.factor, "backoff.factor", 2, 1)
  d.backoff_max_ns = duration(ctx, b.max, "backoff.max", max(120 * NS_S, d.open_for_ns), true,
                              WEEK, "168h")
  if d.backoff_max_ns < d.open_for_ns then
    fail(ctx, "backoff.max must be >= open_for (%s), got %s", show(c.open_for or "5s"),
         show(b.max))
  end
  d.jitter = number(ctx, b.jitter, "backoff.jitter", 0.1, 0, 1)
  d.probes = integer(ctx, c.probes, "probes", 1, 1, 255)
  d.count_mask = outcomes(ctx, c.count, "count", COUNT_DEFAULT, NOT_COUNTED)
  shared(ctx, d, c)
  keyed(ctx, d, c)
  guards[name] = d
end


-- `reserve = { [0] = 0.3, [1] = 0.1 }` (or `reserve = 0.3`, for priority 0): the share of a
-- bulkhead, adaptive limit or limiter kept for each priority and those above it.  Read by
-- policy_guards.c as d.usable_0 .. d.usable_7, per mille: what a call of that priority may fill,
-- 1 - the reserves of the priorities above it (priority 0 may fill everything).
local function reserve(ctx, d, v)
  if v == nil then
    return
  end
  if type(v) == "number" then
    v = { [0] = v }
  elseif type(v) ~= "table" then
    fail(ctx, "reserve must be a table like { [0] = 0.3 } (priority = share), got %s", show(v))
  end
  local share, total = {}, 0
  for p, x in pairs(v) do
    if type(p) ~= "number" or p ~= floor(p) or p < 0 or p >= LOWEST_PRIORITY then
      fail(ctx, "reserve: keys are priorities 0..%d (a share for the lowest, %d, keeps " ..
           "nothing from anyone), got %s", LOWEST_PRIORITY - 1, LOWEST_PRIORITY, show(p))
    end
    share[p] = number(ctx, x, fmt("reserve[%d]", p), nil, 0, 1, false, true)
    total = total + share[p]
  end
  if total >= 1 then
    fail(ctx, "reserve: the shares must add up to less than 1, got %s", show(total))
  end
  local kept = 0
  d.usable_0 = 1000
  for p = 1, LOWEST_PRIORITY do
    kept = kept + (share[p - 1] or 0)
    d["usable_" .. p] = 1000 - floor(kept * 1000 + 0.5)
  end
end

local LIMITER = set { "rate", "per", "burst", "scope", "reserve", "lease", "on_redis_down",
                      "key", "max_keys", "top_k" }
local MAX_TAU_NS = 2 ^ 60 -- limiter.c: burst * per / rate must fit int64 ns with room

local function limiter(ctx, name, c)
  claim_guard(ctx, "limiter", name)
  check_fields(ctx, c, LIMITER, "")
  enum(ctx, c.scope, "scope", "local", { "local", "global" })
  if c.rate == nil then
    fail(ctx, "rate is required")
  end
  local d = { kind = "limiter", name = name, file = ctx.file, line = ctx.line }
  d.rate = number(ctx, c.rate, "rate", nil, 0, nil, false, true)
  d.per_ns = duration(ctx, c.per, "per", NS_S, true)
  d.burst = number(ctx, c.burst, "burst", max(1, d.rate), 1)
  if d.burst * d.per_ns / d.rate > MAX_TAU_NS then
    fail(ctx, "burst * per / rate must be at most 36 years")
  end
  reserve(ctx, d, c.reserve)
  -- scope = "global": the bucket in Redis, spent locally from leases (lease.h).
  if c.scope == "global" then
    if c.reserve ~= nil then
      fail(ctx, "reserve is not available with scope = \"global\" yet")
    end
    d.global = 1
    d.lease = integer(ctx, c.lease, "lease", math.min(50, max(1, floor(d.burst))), 1)
    if d.lease > d.burst then
      fail(ctx, "lease must be at most burst (%s), got %s", show(d.burst), show(c.lease))
    end
    d.on_redis_down = enum(ctx, c.on_redis_down, "on_redis_down", "local",
                           { "local", "open", "closed" })
  elseif c.lease ~= nil or c.on_redis_down ~= nil then
    fail(ctx, "lease and on_redis_down need scope = \"global\"")
  end
  keyed(ctx, d, c)
  guards[name] = d
end

local function bulkhead(ctx, name, c)
  claim_guard(ctx, "bulkhead", name)
  check_fields(ctx, c, set { "max", "reserve" }, "")
  if c.max == nil then
    fail(ctx, "max is required")
  end
  local d = { kind = "bulkhead", name = name, file = ctx.file, line = ctx.line,
              max = integer(ctx, c.max, "max", nil, 1) }
  reserve(ctx, d, c.reserve)
  guards[name] = d
end

-- Client-side throttling (Google SRE): refuses locally with probability
-- (requests - k * accepts) / (requests + 1), at most max_p, over `window` (throttle.h).
local function throttle(ctx, name, c)
  claim_guard(ctx, "throttle", name)
  check_fields(ctx, c, set { "k", "window", "min_requests", "max_p" }, "")
  guards[name] = {
    kind = "throttle", name = name, file = ctx.file, line = ctx.line,
    k = number(ctx, c.k, "k", 2, 1, nil, false, true),
    window_ns = duration(ctx, c.window, "window", 120 * NS_S, true, WEEK, "168h"),
    min_requests = integer(ctx, c.min_requests, "min_requests", 20, 0),
    max_p = number(ctx, c.max_p, "max_p", 0.9, 0, 1),
  }
  if guards[name].window_ns < 24 * 1000000 then
    fail(ctx, "window must be at least 24ms, got %s", show(c.window))
  end
end

-- An adaptive concurrency limit (adaptive.h): Gradient2 on a windowed-minimum baseline.
local function adaptive(ctx, name, c)
  claim_guard(ctx, "adaptive", name)
  check_fields(ctx, c, set { "algorithm", "min", "max", "initial", "tolerance", "smoothing",
                              "backoff", "queue", "window", "min_samples", "reserve" }, "")
  enum(ctx, c.algorithm, "algorithm", "gradient", { "gradient" })
  local g = {
    kind = "adaptive", name = name, file = ctx.file, line = ctx.line,
    min = integer(ctx, c.min, "min", 4, 1),
    tolerance = number(ctx, c.tolerance, "tolerance", 1.5, 1),
    smoothing = number(ctx, c.smoothing, "smoothing", 0.2, 0, 1, false, true),
    backoff = number(ctx, c.backoff, "backoff", 0.9, 0, 1, false, true),
    queue = number(ctx, c.queue, "queue", 4, 0),
    window_ns = duration(ctx, c.window, "window", NS_S, true, WEEK, "168h"),
    min_samples = integer(ctx, c.min_samples, "min_samples", 10, 1),
  }
  g.max = integer(ctx, c.max, "max", g.min > 500 and g.min or 500, g.min)
  local initial = 20
  initial = initial < g.min and g.min or initial > g.max and g.max or initial
  g.initial = integer(ctx, c.initial, "initial", initial, g.min, g.max)
  if g.backoff >= 1 then
    fail(ctx, "backoff must be below 1, got %s", show(c.backoff))
  end
  if g.window_ns < 1000000 then
    fail(ctx, "window must be at least 1ms, got %s", show(c.window))
  end
  reserve(ctx, g, c.reserve)
  guards[name] = g
end

-- ---- steps ------------------------------------------------------------------------------

local function step_token(kind, conf)
  local file, line = where()
  check_loading({ file = file, line = line, what = "r." .. kind })
  local t = {}
  tokens[t] = { kind = kind, conf = conf, file = file, line = line }
  return t
end

local COMMON = { "guards", "timeout", "retry", "fault" }
local STEP_FIELDS = {
  stub = set { "status", "body", "headers", unpack(COMMON) },
  lua = set { "run", unpack(COMMON) },
  c = set { "name", unpack(COMMON) },
  local_cache = set { "key", "ttl", "max_entries", unpack(COMMON) },
  http = set { "url", "method", "headers", "body", unpack(COMMON) },
  redis = set { "cmd", unpack(COMMON) },
  redis_cache = set { "key", "ttl", unpack(COMMON) },
}
for name, fields in pairs(KINDS) do
  STEP_FIELDS[name] = set { unpack(fields) }
  for _, f in ipairs(COMMON) do
    STEP_FIELDS[name][f] = true
  end
end
local STEP_NAME_PATTERN = "^[%w_.%-]+$"
local RETRY = set { "attempts", "backoff", "base", "max", "jitter", "on", "budget" }
local RETRY_ON_DEFAULT = { "timeout", "connect", "5xx" }
local NOT_RETRIED = set { "ok", "canceled" }
local FAULT = set { "delay", "delay_percent", "abort", "abort_percent" }

local function retry(ctx, r)
  if type(r) ~= "table" then
    fail(ctx, "retry must be a table like { attempts = 3 }, got %s", show(r))
  end
  check_fields(ctx, r, RETRY, "retry.")
  if r.attempts == nil then
    fail(ctx, "retry.attempts is required")
  end
  local d = {}
  d.attempts = integer(ctx, r.attempts, "retry.attempts", nil, 1, 10)
  d.exponential = enum(ctx, r.backoff, "retry.backoff", "exponential",
                       { "constant", "exponential" }) == "exponential"
  d.base_ns = duration(ctx, r.base, "retry.base", 20 * NS_MS, false)
  d.max_ns = duration(ctx, r.max, "retry.max", max(NS_S, d.base_ns), false)
  if d.max_ns < d.base_ns then
    fail(ctx, "retry.max must be >= retry.base (%s), got %s", show(r.base), show(r.max))
  end
  d.jitter = enum(ctx, r.jitter, "retry.jitter", "full", { "none", "full", "equal", "decorrelated" })
  d.on_mask = outcomes(ctx, r.on, "retry.on", RETRY_ON_DEFAULT, NOT_RETRIED)
  d.budget = number(ctx, r.budget, "retry.budget", 0.2, 0, 1)
  return d
end

local function fault(ctx, f)
  if type(f) ~= "table" then
    fail(ctx, 'fault must be a table like { abort = "5xx", abort_percent = 5 }, got %s', show(f))
  end
  check_fields(ctx, f, FAULT, "fault.")
  local d = { delay_ns = 0, delay_percent = 0, abort = -1, abort_percent = 0 }
  if f.delay ~= nil then
    d.delay_ns = duration(ctx, f.delay, "fault.delay", nil, true)
    d.delay_percent = percent(ctx, f.delay_percent, "fault.delay_percent", 100)
  elseif f.delay_percent ~= nil then
    fail(ctx, "fault.delay_percent needs fault.delay")
  end
  if f.abort ~= nil then
    d.abort = OUTCOME[enum(ctx, f.abort, "fault.abort", nil, { "5xx", "timeout", "connect" })]
    d.abort_percent = percent(ctx, f.abort_percent, "fault.abort_percent", 100)
  elseif f.abort_percent ~= nil then
    fail(ctx, "fault.abort_percent needs fault.abort")
  end
  if f.delay == nil and f.abort == nil then
    return nil
  end
  return d
end

-- A "${attr}" template: balanced, names not empty (the C side parses it again).
function template(ctx, v, name, example)
  if type(v) ~= "string" or v == "" then
    fail(ctx, "%s must be a template like %s, got %s", name, example, show(v))
  end
  local rest = v:gsub("%${[%w_.%-]+}", "")
  if rest:find("${", 1, true) then
    fail(ctx, '%s: "${" must be followed by an attribute name and "}", got %s', name, show(v))
  end
  return v
end

local function header_list(ctx, v, templated)
  local list = {}
  if v == nil then
    return list
  end
  if type(v) ~= "table" then
    fail(ctx, "headers must be a table of name = value strings, got %s", show(v))
  end
  for k, val in pairs(v) do
    if type(k) ~= "string" or not k:find("^[%w!#$%%&'*+.^_`|~-]+$") then
      fail(ctx, "headers: %s is not a header name", show(k))
    end
    if type(val) ~= "string" or val:find("[\r\n%z]") then
      fail(ctx, "headers[%s] must be a string without CR, LF or NUL, got %s", show(k), show(val))
    end
    if templated then
      template(ctx, val, fmt("headers[%s]", show(k)), '"${token}"')
    end
    list[#list + 1] = { k, val }
  end
  sort(list, function(a, b) return a[1] < b[1] end)
  return list
end

local HTTP_METHODS = { "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS" }
local SENDS_BODY = set { "POST", "PUT", "PATCH" }

-- Validates step token `tok` as step `name` of a policy; returns the normalized step.
local function compile_step(pctx, name, tok)
  local ctx = { file = tok.file, line = tok.line, what = fmt('%s: step "%s"', pctx.what, name) }
  local kind, c = tok.kind, tok.conf
  -- The short forms: r.lua(fn), r.c "name".
  if kind == "lua" and type(c) == "function" then
    c = { run = c }
  elseif kind == "c" and type(c) == "string" then
    c = { name = c }
  end
  if type(c) ~= "table" then
    local forms = { lua = "r.lua(function) or r.lua { run = function, ... }",
                    c = 'r.c "name" or r.c { name = "name", ... }' }
    fail(ctx, "expected %s, got %s", forms[kind] or fmt("r.%s { ... }", kind), show(c))
  end
  check_fields(ctx, c, STEP_FIELDS[kind], "")
  local s = { name = name, kind = kind, line = tok.line, guards = {} }
  if c.guards ~= nil then
    local seen = {}
    for i, g in ipairs(string_list(ctx, c.guards, "guards")) do
      if seen[g] then
        fail(ctx, 'guards lists "%s" twice', g)
      end
      seen[g] = true
      s.guards[i] = g
    end
    if #s.guards > MAX_GUARDS then
      fail(ctx, "guards lists %d guards, at most %d", #s.guards, MAX_GUARDS)
    end
  end
  s.timeout_ns = duration(ctx, c.timeout, "timeout", 0, true)
  if c.retry ~= nil then
    s.retry = retry(ctx, c.retry)
  end
  if c.fault ~= nil then
    s.fault = fault(ctx, c.fault)
  end
  if kind == "stub" then
    s.status = integer(ctx, c.status, "status", 200, 100, 599)
    if c.body ~= nil and type(c.body) ~= "string" then
      fail(ctx, "body must be a string, got %s", show(c.body))
    end
    s.body = c.body or ""
    s.headers = header_list(ctx, c.headers, false)
  elseif kind == "lua" then
    if type(c.run) ~= "function" then
      fail(ctx, "run must be a function, got %s", show(c.run))
    end
    s.run = c.run
  elseif kind == "c" then
    if type(c.name) ~= "string" or c.name == "" then
      fail(ctx, "name must be the name of a registered C step, got %s", show(c.name))
    end
    s.cname = c.name
  elseif kind == "local_cache" then
    if type(c.key) ~= "string" or c.key == "" then
      fail(ctx, 'key must be a template like "user:${id}", got %s', show(c.key))
    end
    s.key = c.key
    s.ttl_ns = duration(ctx, c.ttl, "ttl", 60 * NS_S, true)
    s.max_entries = integer(ctx, c.max_entries, "max_entries", 10000, 1)
  elseif kind == "http" then
    local url = template(ctx, c.url, "url", '"http://127.0.0.1:9000/users/${id}"')
    if not url:find("^https?://[^/]") then
      fail(ctx, "url must start with http:// or https:// and a host, got %s", show(url))
    end
    s.url = url
    s.method = enum(ctx, c.method, "method", "GET", HTTP_METHODS)
    s.headers = header_list(ctx, c.headers, true)
    -- body: a template, or false for none; by default POST/PUT/PATCH pass req.body on.
    if c.body == false then
      s.pass_body = false
    elseif c.body ~= nil then
      if type(c.body) ~= "string" then
        fail(ctx, "body must be a template string, or false for none, got %s", show(c.body))
      end
      s.body = c.body == "" and c.body or template(ctx, c.body, "body", '"${payload}"')
      s.pass_body = false
    else
      s.pass_body = SENDS_BODY[s.method] or false
    end
  elseif kind == "redis" then
    if type(c.cmd) ~= "table" or #c.cmd == 0 then
      fail(ctx, 'cmd must be a list like { "GET", "user:${id}" }, got %s', show(c.cmd))
    end
    -- Replies to these stop pairing with requests on a shared, pipelined connection.
    local verb = type(c.cmd[1]) == "string" and c.cmd[1]:lower() or ""
    if verb == "subscribe" or verb == "psubscribe" or verb == "unsubscribe"
        or verb == "punsubscribe" or verb == "monitor" then
      fail(ctx, "cmd: %s cannot run on the worker's shared connection", c.cmd[1])
    end
    s.cmd = {}
    for i, a in ipairs(c.cmd) do
      if type(a) == "number" then
        a = tostring(a)
      end
      s.cmd[i] = template(ctx, a, fmt("cmd[%d]", i), '"user:${id}"')
    end
    for k in pairs(c.cmd) do
      if type(k) ~= "number" or k < 1 or k > #c.cmd or k % 1 ~= 0 then
        fail(ctx, "cmd must be a list (no named fields), got key %s", show(k))
      end
    end
  elseif kind == "redis_cache" then
    s.key = template(ctx, c.key, "key", '"user:${id}"')
    s.ttl_ns = duration(ctx, c.ttl, "ttl", 60 * NS_S, true)
  elseif KINDS[kind] then
    for _, f in ipairs(KINDS[kind]) do
      s[f] = c[f] -- checked by the kind's reader in C, which names this step's line
    end
  end
  return s
end

-- ---- policies ---------------------------------------------------------------------------

local POLICY = set { "steps", "chain", "fallback_on", "deadline", "route", "priority" }
local FALLBACK_DEFAULT = {}
for _, o in ipairs(OUTCOMES) do
  if o ~= "ok" and o ~= "4xx" and o ~= "canceled" then
    FALLBACK_DEFAULT[#FALLBACK_DEFAULT + 1] = o
  end
end

local function policy(ctx, name, c)
  local prev = policies[name]
  if prev then
    fail(ctx, "already declared at %s:%d", prev.file, prev.line)
  end
  check_fields(ctx, c, POLICY, "")
  local p = { name = name, file = ctx.file, line = ctx.line, steps = {}, chain = {} }

  local steps = c.steps
  if steps == nil then
    fail(ctx, "steps is required")
  elseif type(steps) ~= "table" then
    fail(ctx, "steps must be a table of name = step, got %s", show(steps))
  end
  local names = {}
  for k, v in pairs(steps) do
    if type(k) ~= "string" then
      fail(ctx, "steps must map names to steps, got a list entry [%s]", show(k))
    end
    if not k:find(STEP_NAME_PATTERN) then
      fail(ctx, "step name %s must be letters, digits, '_', '.' and '-'", show(k))
    end
    if not tokens[v] then
      fail(ctx, "steps.%s must be a step (r.lua, r.c, r.stub, r.local_cache), got %s", k, show(v))
    end
    names[#names + 1] = k
  end
  if #names == 0 then
    fail(ctx, "steps must not be empty")
  end
  -- Validate in the order they appear in the file, so the first error is the first line.
  sort(names, function(a, b)
    local ta, tb = tokens[steps[a]], tokens[steps[b]]
    if ta.line ~= tb.line then
      return ta.line < tb.line
    end
    return a < b
  end)
  local byname = {}
  for _, k in ipairs(names) do
    byname[k] = compile_step(ctx, k, tokens[steps[k]])
  end
  sort(names)
  local index = {}
  for i, k in ipairs(names) do
    p.steps[i] = byname[k]
    index[k] = i - 1
  end

  local chain = c.chain
  if chain == nil then
    if #names > 1 then
      fail(ctx, "chain is required when a policy has more than one step")
    end
    chain = { names[1] }
  end
  if type(chain) ~= "table" or not is_list(chain) or #chain == 0 then
    fail(ctx, "chain must be a non-empty list of step names, got %s", show(chain))
  end
  if #chain > MAX_CHAIN then
    fail(ctx, "chain has %d steps, at most %d", #chain, MAX_CHAIN)
  end
  for i = 1, #chain do
    local s = chain[i]
    if type(s) ~= "string" then
      fail(ctx, "chain must be a list of step names, got %s at position %d", show(s), i)
    end
    if not index[s] then
      fail(ctx, "chain: unknown step %s", show(s))
    end
    p.chain[i] = s
  end

  p.fallback_mask = outcomes(ctx, c.fallback_on, "fallback_on", FALLBACK_DEFAULT, set { "ok" })
  p.deadline_ns = duration(ctx, c.deadline, "deadline", 0, true)
  if c.route ~= nil and type(c.route) ~= "function" then
    fail(ctx, "route must be a function(req, sig), got %s", show(c.route))
  end
  p.route = c.route
  p.user_route = c.route ~= nil -- what describe shows: p.route may be priority's wrapper
  p.has_priority = c.priority ~= nil
  -- `priority` (0 highest .. 7, a number or function(req)) rides on the route: the route
  -- (or the chain) is the first value, the priority a second one, which the C side reads
  -- (lua_api.c); a route's own { chain = ..., priority = N } wins.
  local pr = c.priority
  if pr ~= nil then
    local pf = pr
    if type(pr) == "number" then
      integer(ctx, pr, "priority", nil, 0, LOWEST_PRIORITY)
      pf = function() return pr end
    elseif type(pr) ~= "function" then
      fail(ctx, "priority must be an integer 0..%d or a function(req), got %s",
           LOWEST_PRIORITY, show(pr))
    end
    local route, chain = c.route, p.chain
    p.route = function(req, sig)
      local r = chain
      if route then
        r = route(req, sig)
        if type(r) == "table" and r.priority ~= nil then
          return r
        end
      end
      return r, pf(req)
    end
  end
  p.ctx = ctx
  p.index = index
  policies[name] = p
end

-- ---- expose -----------------------------------------------------------------------------

local METHODS = set { "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "*" }

local function expose(t)
  local file, line = where()
  local ctx = { file = file, line = line, what = "expose" }
  check_loading(ctx)
  if type(t) ~= "table" then
    fail(ctx, 'expected a table like { ["GET /users/:id"] = "policy" }, got %s', show(t))
  end
  local keys = {}
  for k in pairs(t) do
    if type(k) ~= "string" then
      fail(ctx, 'keys must be strings like "GET /users/:id", got %s', show(k))
    end
    keys[#keys + 1] = k
  end
  sort(keys)
  for _, k in ipairs(keys) do
    local ectx = { file = file, line = line, what = fmt("expose %s", show(k)) }
    local method, path = k:match("^(%S+) (%S+)$")
    if not method then
      fail(ectx, 'must be "METHOD /path"')
    end
    if not METHODS[method] then
      fail(ectx, "method must be one of GET, POST, PUT, DELETE, PATCH, HEAD or *, got %s",
           show(method))
    end
    if path:byte(1) ~= 47 then
      fail(ectx, 'path must start with "/"')
    end
    local shape, params = {}, {}
    for seg in path:gmatch("/([^/]*)") do
      if seg:byte(1) == 58 then -- ":name"
        local pname = seg:sub(2)
        if not pname:find("^[%a_][%w_]*$") then
          fail(ectx, "path parameter %s must be a name (letters, digits, '_')", show(seg))
        end
        if params[pname] then
          fail(ectx, "path parameter %s appears twice", show(seg))
        end
        params[pname] = true
        shape[#shape + 1] = ":"
      else
        shape[#shape + 1] = seg
      end
    end
    local target = t[k]
    if type(target) ~= "string" then
      fail(ectx, "expected a policy name, got %s", show(target))
    end
    local prev = exposes[k]
    if prev then
      fail(ectx, "already declared at %s:%d", prev.file, prev.line)
    end
    local skey = method .. " /" .. concat(shape, "/")
    local other = shapes[skey]
    if other then
      fail(ectx, "same route as %s at %s:%d", show(other.key), other.file, other.line)
    end
    local e = { key = k, method = method, path = path, policy = target, file = file, line = line }
    exposes[k] = e
    shapes[skey] = e
  end
end

-- ---- the static route check ------------------------------------------------------------

-- The bytecode instructions of fn: for pc, ins in instructions(fn) do ... end
local function instructions(fn)
  return function(_, pc)
    pc = pc + 1
    local ins = jutil.funcbc(fn, pc)
    if ins then
      return pc, ins
    end
  end, nil, 0
end

-- The opcodes of "return { ... }": read off a probe function, so no opcode table of a
-- particular LuaJIT version is needed.
local OP_TDUP, OP_RET1, OP_UCLO
do
  local probe = function() return { "x" } end
  OP_TDUP = jutil.funcbc(probe, 1) % 256
  OP_RET1 = jutil.funcbc(probe, 2) % 256
  -- With a closure in scope, the return first closes upvalues: TDUP, UCLO, RET1.
  local probe2 = function(a)
    local g = function() return a end
    if a then return { "x" } end
    return g
  end
  for pc, ins in instructions(probe2) do
    if ins % 256 == OP_TDUP then
      local nxt = jutil.funcbc(probe2, pc + 1)
      if nxt and nxt % 256 ~= OP_RET1 then
        OP_UCLO = nxt % 256
      end
      break
    end
  end
end

-- Lists of strings a route can return, seen without running it: table constants of the
-- route function and the functions nested in it, and tables it holds as upvalues.  A list
-- naming at least one step of the policy is a path; its other strings are suspects.
local function route_warnings(p, out)
  local seen = {}
  -- strict: a literal the route returns as it is ("return { ... }"): every string in it
  -- must be a step, even when none is.
  local function check(list, line, strict)
    if seen[list] then
      return
    end
    seen[list] = true
    local n, known = #list, false
    if n == 0 then
      return
    end
    for i = 1, n do
      if type(list[i]) ~= "string" then
        return
      end
      known = known or p.index[list[i]] ~= nil
    end
    if not known and not strict then
      return
    end
    for i = 1, n do
      if not p.index[list[i]] then
        out[#out + 1] = { file = p.file, line = line,
                          msg = fmt('%s:%d: policy "%s": route may return unknown step "%s"',
                                    p.file, line, p.name, list[i]) }
      end
    end
  end
  local function walk(fn, depth)
    local fi = jutil.funcinfo(fn)
    if not fi or not fi.linedefined or depth > 20 then
      return
    end
    -- Lines of the TDUP instructions that instantiate each table constant.
    local lines, returned = {}, {}
    for pc, ins in instructions(fn) do
      if ins % 256 == OP_TDUP then
        local d = floor(ins / 65536) -- the D operand: a constant index for TDUP
        local k = jutil.funck(fn, -d - 1)
        if type(k) == "table" then
          if not lines[k] then
            local li = jutil.funcinfo(fn, pc)
            lines[k] = li and li.currentline
          end
          local at = pc + 1
          local nxt = jutil.funcbc(fn, at)
          while nxt and nxt % 256 == OP_UCLO do
            at = at + 1
            nxt = jutil.funcbc(fn, at)
          end
          local a = floor(ins / 256) % 256
          if nxt and nxt % 256 == OP_RET1 and floor(nxt / 256) % 256 == a then
            returned[k] = true
          end
        end
      end
    end
    local i = -1
    while true do
      local k = jutil.funck(fn, i)
      if k == nil then
        break
      end
      if type(k) == "table" then
        check(k, lines[k] or fi.linedefined, returned[k] and depth == 0)
      elseif type(k) == "proto" then
        walk(k, depth + 1)
      end
      i = i - 1
    end
  end
  walk(p.route, 0)
  local ri = getinfo(p.route, "S")
  local i = 1
  while true do
    local name, v = getupvalue(p.route, i)
    if not name then
      break
    end
    if type(v) == "table" and is_list(v) then
      check(v, ri.linedefined)
    end
    i = i + 1
  end
end

-- ---- the control table ------------------------------------------------------------------

local function by_name(a, b)
  return a.name < b.name
end

local function by_place(a, b)
  if a.file ~= b.file then
    return a.file < b.file
  elseif a.line ~= b.line then
    return a.line < b.line
  end
  return a.msg < b.msg
end

local ctl = {}

-- Ends loading: returns the normalized declarations, or nil and a list of error lines.
function ctl.finish()
  finished = true
  local errs = {}
  local function err(file, line, msg)
    errs[#errs + 1] = { file = file, line = line, msg = fmt("%s:%d: %s", file, line, msg) }
  end
  for _, p in ipairs(pending) do
    if not p.done then
      err(p.ctx.file, p.ctx.line, fmt("%s: declared without its settings table", p.ctx.what))
    end
  end
  local out = { guards = {}, policies = {}, expose = {}, warnings = {} }
  for _, p in pairs(policies) do
    for _, s in ipairs(p.steps) do
      for _, g in ipairs(s.guards) do
        if not guards[g] then
          err(p.file, p.line, fmt('policy "%s": step "%s": unknown guard "%s"', p.name, s.name, g))
        end
      end
    end
    out.policies[#out.policies + 1] = p
  end
  for _, e in pairs(exposes) do
    if not policies[e.policy] then
      err(e.file, e.line, fmt('expose %s: unknown policy %s', show(e.key), show(e.policy)))
    end
    out.expose[#out.expose + 1] = e
  end
  if #errs > 0 then
    sort(errs, by_place)
    local lines = {}
    for i, e in ipairs(errs) do
      lines[i] = e.msg
    end
    return nil, lines
  end
  for _, g in pairs(guards) do
    out.guards[#out.guards + 1] = g
  end
  sort(out.guards, by_name)
  sort(out.policies, by_name)
  sort(out.expose, function(a, b) return a.key < b.key end)
  local warns = {}
  for _, p in ipairs(out.policies) do
    if p.route then
      route_warnings(p, warns)
    end
  end
  sort(warns, by_place)
  for i, w in ipairs(warns) do
    out.warnings[i] = w.msg
  end
  return out
end

-- ---- the public module ------------------------------------------------------------------

local r = {}
r.breaker = named("breaker", breaker)
r.limiter = named("limiter", limiter)
r.bulkhead = named("bulkhead", bulkhead)
r.throttle = named("throttle", throttle)
r.adaptive = named("adaptive", adaptive)
r.policy = named("policy", policy)
r.expose = expose
for kind in pairs(STEP_FIELDS) do
  r[kind] = function(conf)
    return step_token(kind, conf)
  end
end
return r, ctl
