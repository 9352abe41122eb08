-- storefront_outage.lua -- the demo's outage, simulated: `resilua simulate -p policies
-- policies/scenarios/storefront_outage.lua`.  Healthy, then the upstream answers 503s,
-- then it refuses connections, then it is healthy again; 30% of the traffic is VIP.
scenario { policy = "storefront.product", duration = "60s", seed = 7 }
traffic { rate = 200, attrs = { tier = { vip = 0.3, free = 0.7 },
                                id = { "1", "2", "3", "4", "5", "6", "7", "8" } } }
upstream "primary" { latency = { p50 = "5ms", p99 = "40ms" } }
upstream "primary" { from = "15s", to = "30s", error_rate = 100, status = 503 }
upstream "primary" { from = "30s", to = "45s", down = true }
