-- storefront_30min.lua -- storefront.lua through a 30-minute outage, for the demo's last
-- part: `resilua simulate -p policies policies/scenarios/storefront_30min.lua --svg out.svg`.
-- Five healthy minutes, ten of 503s, ten of refused connections, five healthy again;
-- 200 calls/s, 30% of them VIP, over 50 products.
local ids = {}
for i = 1, 50 do ids[i] = tostring(i) end
scenario { policy = "storefront.product", duration = "30m", seed = 11 }
traffic { rate = 200, attrs = { tier = { vip = 0.3, free = 0.7 }, id = ids } }
upstream "primary" { latency = { p50 = "8ms", p99 = "60ms" } }
upstream "primary" { from = "5m", to = "15m", error_rate = 100, status = 503 }
upstream "primary" { from = "15m", to = "25m", down = true }
