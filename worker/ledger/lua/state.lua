-- state.lua: one scope's limits and current period, read in one step. Runs after
-- common.lua.
--
-- KEYS[1] as in common.lua (the slot's leases).
-- ARGV[1..2] as in common.lua, then ARGV[3] the scope's prefix.
-- Returns {0} when the scope has no record, else
--   {1, limit_nanousd|'', period, window_s|'', start_ms|'', rpm|'', tpm|'',
--    period_id, period_end_ms(-1 none), spent, reserved, drawn, credits, team|'', label,
--    moved_to|'', rollover cap|'', carried, thresholds|'', model_1, spent_1, model_2,
--    spent_2, ...}
--   (carried: what the previous period left, carried into this one; then per-model spend)
-- Changes nothing but reclaiming expired leases and writing off expired credits, so
-- `reserved` and `credits` are current.

local p = ARGV[3]
local now = now_ms()
reclaim(now)

local budget = read_budget(p)
if not budget then
  return {0}
end
local b = redis.call('HMGET', p .. 'budget', 'limit_nanousd', 'period', 'window_s',
  'start_ms', 'rpm', 'tpm')
local period_id, period_end = budget_period(budget, now)
local carried = carry_into(budget, now)
local credits = credits_of(live_grants(p, now))
local reply = {1, b[1] or '', b[2] or 'none', b[3] or '', b[4] or '', b[5] or '', b[6] or '',
  period_id, period_end, '0', '0', '0', istr(credits), budget.team or '', budget.label,
  budget.moved_to or '', budget.rollover and istr(budget.rollover) or '', istr(carried),
  budget.thresholds or ''}
local fields = redis.call('HGETALL', p .. 'spend:' .. period_id)
for i = 1, #fields, 2 do
  local name = fields[i]
  if name == 'spent' then
    reply[10] = fields[i + 1]
  elseif name == 'reserved' then
    reply[11] = fields[i + 1]
  elseif name == 'drawn' then
    reply[12] = fields[i + 1]
  elseif string.sub(name, 1, 6) == 'model:' then
    reply[#reply + 1] = string.sub(name, 7)
    reply[#reply + 1] = fields[i + 1]
  end
end
return reply
