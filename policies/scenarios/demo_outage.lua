-- demo_outage.lua -- the demo's live outage (scripts/demo.sh, scripts/demo_traffic.py)
-- replayed: 20 s of traffic, 30% VIP over 20 products; the upstream healthy, answering
-- 503 to everything from 5 s, refusing connections from 11 s, healthy again from 15 s.
-- tests/e2e/test_demo.sh runs both and compares the breaker's transitions and the
-- served-by shares (it sets the rate to what the live run reached).
local ids = {}
for i = 1, 20 do ids[i] = tostring(i) end
scenario { policy = "storefront.product", duration = "20s", seed = 3 }
traffic { rate = 250, attrs = { tier = { vip = 0.3, free = 0.7 }, id = ids } }
upstream "primary" { latency = { p50 = "1ms", p99 = "5ms" } }
upstream "primary" { from = "5s", to = "11s", error_rate = 100, status = 503 }
upstream "primary" { from = "11s", to = "15s", down = true }
