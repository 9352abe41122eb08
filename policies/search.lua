-- search.lua -- load shedding by business rule, read from a bulkhead's load.
--
-- What it shows:
--   * a limiter and a bulkhead guarding one step (a limiter that is empty or a bulkhead
--     that is full answers `rejected`, and the chain moves on);
--   * route() reading a signal: above 75% of the bulkhead's capacity, non-VIP searches
--     skip the primary and are served from the cache or a "popular items" page, keeping
--     the remaining capacity for VIP customers;
--   * a missing query is a 400 from the primary, returned as is (no fallback).
--
-- Try:
--   resilua call search.query q=shoes
--   resilua call search.query                 # 400, outcome 4xx, exit 1
local r = require "resilua"

r.limiter "search-rps" { rate = 200, per = "1s", burst = 50 }
r.bulkhead "search-conc" { max = 8 }

-- The simulated search service: a tiny in-memory index.
local ITEMS = { "red shoes", "blue shoes", "running shoes", "red scarf", "wool hat" }

local function search_service(req)
  local q = req.q
  if not q or q == "" then
    return { status = 400, body = '{"error":"missing q"}' }
  end
  if not q:match("^[%w ]+$") then
    return { status = 400, body = '{"error":"q must be letters, digits and spaces"}' }
  end
  local hits = {}
  for _, item in ipairs(ITEMS) do
    if item:find(q:lower(), 1, true) then
      hits[#hits + 1] = '"' .. item .. '"'
    end
  end
  return { status = 200, body = '{"q":"' .. q .. '","results":[' .. table.concat(hits, ",") .. ']}' }
end

local FULL   = { "primary", "cache", "popular" }
local SHED   = { "cache", "popular" }

r.policy "search.query" {
  deadline = "250ms",
  steps = {
    primary = r.lua { run = search_service, guards = { "search-rps", "search-conc" } },
    cache = r.local_cache { key = "search:${q}", ttl = "5m", max_entries = 5000 },
    popular = r.stub { status = 200, body = '{"results":["wool hat","red scarf"],"note":"search is busy: popular items"}' },
  },
  chain = { "primary", "cache", "popular" },
  route = function(req, sig)
    -- sig.load: bulkhead inflight / max, read from the shared guard without a lock.
    if req.tier ~= "vip" and sig.load("search-conc") >= 0.75 then
      return SHED
    end
    return FULL
  end,
}
