-- reset.lua: zero a scope's spend in the current period. Runs after common.lua.
--
-- KEYS[1] as in common.lua (the slot's leases).
-- ARGV[1..2] as in common.lua, then ARGV[3] the scope's prefix.
-- Returns 1 when the scope has a record (and its current spend is now 0), else 0.
-- Idempotent. Live reservations stay reserved; per-model spend of the period is
-- cleared with the total; what was drawn from credits stays drawn (credits are not
-- given back: their entries are immutable); rate-limit allowances are untouched.

local p = ARGV[3]
local now = now_ms()
reclaim(now)

local budget = read_budget(p)
if not budget then
  return 0
end
local period_id, period_end = budget_period(budget, now)
local spend_key = p .. 'spend:' .. period_id
local fields = redis.call('HKEYS', spend_key)
for i = 1, #fields do
  if string.sub(fields[i], 1, 6) == 'model:' then
    redis.call('HDEL', spend_key, fields[i])
  end
end
redis.call('HSET', spend_key, 'spent', '0', 'drawn', '0')
if period_end >= 0 then
  redis.call('PEXPIREAT', spend_key, istr(period_end + KEEP_MS))
end
return 1
