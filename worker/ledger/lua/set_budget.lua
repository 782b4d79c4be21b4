-- set_budget.lua: create or change a scope's limits. Runs after common.lua.
--
-- KEYS[1] as in common.lua (the slot's leases).
-- ARGV[1..2] as in common.lua, then:
--   ARGV[3]  the scope's prefix (a user, a user's limit on a model, a team, the org)
--   ARGV[4]  its label ('user:alice', 'team:eng', 'org:acme', 'model:alice/gpt-4o')
--   ARGV[5]  the raw user id for a user scope (kept for display), else ''
--   ARGV[6]  limit_nanousd, decimal string >= 0, or '' for no USD limit
--   ARGV[7]  period: daily | weekly | monthly | yearly | rolling | none
--   ARGV[8]  window_s for rolling, else ''
--   ARGV[9]  rpm or ''   ARGV[10]  tpm or ''
--   ARGV[11] for a user's limit on a model: the user's prefix, else ''
--   ARGV[12] ... and the model's encoded id (listed in the user's 'models', so that a
--            move takes it along)
--   ARGV[13] the rollover cap (nano-USD of unused allowance carried into the next
--            period), or '' for no rollover
--   ARGV[14] spend thresholds, percents of the USD limit separated by spaces
--            ('50 80 95 100'), or '' for the default (common.lua, DEFAULT_THRESHOLDS)
-- Returns 1 when the scope was created, 0 when an existing one was changed.
-- Idempotent: setting the same limits twice is one change. Spend is kept: it lives in
-- the period's spend hash, which this script does not touch; membership (team) and
-- credits are kept too. A rolling budget keeps the start of its windows across changes
-- and takes Redis's clock as its start otherwise. The caller writes the scope's index
-- before this script, so 'indexed' = 1.

local p = ARGV[3]
local now = now_ms()
reclaim(now)

local key = p .. 'budget'
local old = redis.call('HMGET', key, 'period', 'start_ms', 'label', 'rollover')
local start_ms = ''
if ARGV[7] == 'rolling' then
  if old[1] == 'rolling' and old[2] and old[2] ~= '' then
    start_ms = old[2]
  else
    start_ms = istr(now)
  end
end
redis.call('HSET', key, 'label', ARGV[4], 'period', ARGV[7], 'window_s', ARGV[8],
  'start_ms', start_ms, 'rpm', ARGV[9], 'tpm', ARGV[10], 'indexed', '1')
if ARGV[5] ~= '' then
  redis.call('HSET', key, 'user_id', ARGV[5])
end
if ARGV[13] == '' then
  redis.call('HDEL', key, 'rollover', 'rollover_since')
else
  -- Carry counts from the first period the scope had rollover for all of.
  if not old[4] then
    redis.call('HSET', key, 'rollover_since', istr(now))
  end
  redis.call('HSET', key, 'rollover', ARGV[13])
end
if ARGV[6] == '' then
  redis.call('HDEL', key, 'limit_nanousd')
else
  redis.call('HSET', key, 'limit_nanousd', ARGV[6])
end
if ARGV[14] == '' then
  redis.call('HDEL', key, 'thresholds')
else
  redis.call('HSET', key, 'thresholds', ARGV[14])
end
if ARGV[11] ~= '' then
  local parent = ARGV[11] .. 'budget'
  local models = split(redis.call('HGET', parent, 'models'))
  local listed = false
  for _, token in ipairs(models) do
    if token == ARGV[12] then listed = true end
  end
  if not listed then
    models[#models + 1] = ARGV[12]
    redis.call('HSET', parent, 'models', table.concat(models, ' '))
  end
end
if old[3] or old[1] then
  return 0
end
return 1
