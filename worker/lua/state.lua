-- state.lua: a user's budget and current period, read in one step. Runs after common.lua.
--
-- KEYS[1..4] as in common.lua.
-- ARGV[1..3] as in common.lua.
-- Returns {0} when the user has no budget, else
--   {1, limit_nanousd, period, window_s|'', start_ms|'', rpm|'', tpm|'',
--    period_id, period_end_ms(-1 none), spent, reserved,
--    model_1, spent_1, model_2, spent_2, ...}       (per-model spend of the period)
-- Changes nothing except reclaiming expired leases, so `reserved` is current.

local now = now_ms()
reclaim(now)

local b = redis.call('HMGET', KEYS[1], 'limit_nanousd', 'period', 'window_s', 'start_ms',
  'rpm', 'tpm')
if not b[1] then
  return {0}
end
local budget = read_budget()
local period_id, period_end = budget_period(budget, now)
local reply = {1, b[1], b[2], b[3] or '', b[4] or '', b[5] or '', b[6] or '', period_id,
  period_end, '0', '0'}
local fields = redis.call('HGETALL', SPEND_PREFIX .. period_id)
for i = 1, #fields, 2 do
  local name = fields[i]
  if name == 'spent' then
    reply[10] = fields[i + 1]
  elseif name == 'reserved' then
    reply[11] = fields[i + 1]
  elseif string.sub(name, 1, 6) == 'model:' then
    reply[#reply + 1] = string.sub(name, 7)
    reply[#reply + 1] = fields[i + 1]
  end
end
return reply
