-- move_in.lua: write a moving user into its new slot. Runs after common.lua.
--
-- KEYS[1] as in common.lua (the new slot's leases).
-- ARGV[1..2] as in common.lua, then:
--   ARGV[3]  the user's scope prefix in this slot
--   ARGV[4]  the JSON move_out.lua answered
--   ARGV[5]  the team's encoded id in this slot, or '' for none
--   ARGV[6]  the old slot's tag: for keep_ms, a reserve of a job this slot has no
--            record of asks the caller to look there first (it may have ended there)
-- Returns 1.
-- Indexes the user among its team's members (or the organisation's direct ones).
-- Idempotent: a move repeated after a crash writes the same state again. The user's
-- limits, current-period spend, per-model limits, credits and their history move; past
-- periods' spend stays behind and expires there.

local p, team = ARGV[3], ARGV[5]
local now = now_ms()
reclaim(now)
local data = cjson.decode(ARGV[4])

local function write_map(key, map)
  redis.call('DEL', key)
  for k, v in pairs(map) do
    redis.call('HSET', key, k, v)
  end
end

local function write_scope(prefix, scope)
  write_map(prefix .. 'budget', scope.budget)
  write_map(prefix .. 'spend:' .. scope.period, scope.spend)
  local b = read_budget(prefix)
  local _, period_end = budget_period(b, now)
  if period_end >= 0 and redis.call('EXISTS', prefix .. 'spend:' .. scope.period) == 1 then
    redis.call('PEXPIREAT', prefix .. 'spend:' .. scope.period, istr(period_end + KEEP_MS))
  end
end

write_scope(p, data)
redis.call('HSET', p .. 'budget', 'team', team)
index_member(p, team, data.budget.user_id)
redis.call('HDEL', p .. 'budget', 'moved_to', 'moving_until')
redis.call('HSET', p .. 'budget', 'moved_from', ARGV[6], 'moved_at', istr(now))
write_map(p .. 'grants', data.grants)
write_map(p .. 'adjusted', data.adjusted)
redis.call('DEL', p .. 'entries')
for _, e in ipairs(data.entries) do
  redis.call('RPUSH', p .. 'entries', e)
end
for token, scope in pairs(data.models) do
  write_scope(p .. 'm:' .. token .. ':', scope)
end
return 1
