-- set_budget.lua: create or change a user's budget. Runs after common.lua.
--
-- KEYS[1..4] as in common.lua.
-- ARGV[1..3] as in common.lua, then:
--   ARGV[4]  raw user id (kept for display)
--   ARGV[5]  limit_nanousd, decimal string >= 0
--   ARGV[6]  period: daily | weekly | monthly | yearly | rolling | none
--   ARGV[7]  window_s for rolling, else ''
--   ARGV[8]  rpm or ''   ARGV[9]  tpm or ''
-- Returns 1 when the budget was created, 0 when an existing one was changed.
-- Idempotent: setting the same budget twice is one budget. Spend is kept: it lives in
-- the period's spend hash, which this script does not touch. A rolling budget keeps the
-- start of its windows across changes and takes Redis's clock as its start otherwise.
-- The caller writes the users index before this script, so 'indexed' = 1.

local now = now_ms()
reclaim(now)

local old = redis.call('HMGET', KEYS[1], 'period', 'start_ms')
local start_ms = ''
if ARGV[6] == 'rolling' then
  if old[1] == 'rolling' and old[2] and old[2] ~= '' then
    start_ms = old[2]
  else
    start_ms = istr(now)
  end
end
redis.call('HSET', KEYS[1], 'user_id', ARGV[4], 'limit_nanousd', ARGV[5], 'period', ARGV[6],
  'window_s', ARGV[7], 'start_ms', start_ms, 'rpm', ARGV[8], 'tpm', ARGV[9], 'indexed', '1')
if old[1] then
  return 0
end
return 1
