-- test_storefront.lua -- what storefront.lua promises, checked on a virtual clock with
-- `resilua test -p policies policies/tests` (CI runs it).

-- Healthy: everyone gets the upstream's answer, and VIPs' answers are kept in the cache.
expect(call("storefront.product", { id = "1", tier = "vip" }))
  .served_by("primary").path{ "primary=ok" }.status(200).degraded(false)
expect(call("storefront.product", { id = "2", tier = "free" }))
  .served_by("primary").status(200)

-- A 404 is the upstream's answer about the product, returned as is: never masked.
expect(call("storefront.product", { id = "404", tier = "vip" }, { primary = 404 }))
  .served_by("primary").status(404).outcome("4xx")

-- The upstream goes down: a VIP keeps real data from the cache, a free user gets the
-- static page.
expect(call("storefront.product", { id = "1", tier = "vip" }, { upstream = "down" }))
  .served_by("cache").path{ "primary=connect", "cache=ok" }.status(200).degraded(true)
expect(call("storefront.product", { id = "2", tier = "free" }, { upstream = "down" }))
  .served_by("stub").path{ "primary=connect", "stub=ok" }.degraded(true)
-- A VIP whose product was never cached falls through to the static page too.
expect(call("storefront.product", { id = "3", tier = "vip" }, { upstream = "down" }))
  .served_by("stub").path{ "primary=connect", "cache=miss", "stub=ok" }

-- A slow upstream: the step's 200 ms timeout ends the attempt, the cache serves.
expect(call("storefront.product", { id = "1", tier = "vip" }, { primary = { latency = "300ms" } }))
  .served_by("cache").path{ "primary=timeout", "cache=ok" }

-- Enough failures open the breaker (50% of at least 10 calls in 2 s) ...
for i = 1, 8 do
  call("storefront.product", { id = "2", tier = "free" }, { upstream = 503 })
end
expect(state("products-api")).is("open")
-- ... and then free users go straight to the static page, without a rejected attempt,
expect(call("storefront.product", { id = "2", tier = "free" }))
  .served_by("stub").path{ "stub=ok" }
-- while VIPs are refused by the open breaker and served from the cache.
expect(call("storefront.product", { id = "1", tier = "vip" }))
  .served_by("cache").path{ "primary=rejected", "cache=ok" }

-- Past the open period (1 s, jitter 10%) one probe closes it again.
after("1200ms")
expect(call("storefront.product", { id = "1", tier = "vip" }))
  .served_by("primary").path{ "primary=ok" }
expect(state("products-api")).is("closed")
