-- move_out.lua: begin moving a user to another slot (joining or leaving an
-- organisation): refuse while the user holds reservations, else mark the user as
-- moving and answer everything that moves with it. Runs after common.lua.
--
-- KEYS[1] as in common.lua (the slot's leases).
-- ARGV[1..2] as in common.lua, then:
--   ARGV[3]  the user's scope prefix in this slot
-- Returns {1, data}: data is JSON {budget, period, spend, grants, entries, adjusted,
--   models: {token: {budget, period, spend}}}, every value as Redis holds it;
--   {0, live}: the user holds `live` reservations now (jobs in flight: try again when
--   they end); {2, moved_to}: the user has already moved; {3}: the user has no record.
-- While moving (10 s at most, then the mark lapses by itself), reserves of the user
-- answer "moving" and are tried again; move_done.lua ends it.

local p = ARGV[3]
local now = now_ms()
reclaim(now)

local budget = read_budget(p)
if not budget then
  return {3}
end
if budget.moved_to then
  return {2, budget.moved_to}
end
local live = tonumber(redis.call('GET', p .. 'live') or '0')
if live > 0 then
  return {0, istr(live)}
end
redis.call('HSET', p .. 'budget', 'moving_until', istr(now + 10000))

local function as_map(key)
  local raw = redis.call('HGETALL', key)
  local out = {}
  for i = 1, #raw, 2 do
    out[raw[i]] = raw[i + 1]
  end
  return out
end

local function scope_data(prefix, b)
  local period = budget_period(b, now)
  local data = as_map(prefix .. 'budget')
  data.moving_until = nil
  return {budget = data, period = period, spend = as_map(prefix .. 'spend:' .. period)}
end

local data = scope_data(p, budget)
data.grants = as_map(p .. 'grants')
data.entries = redis.call('LRANGE', p .. 'entries', 0, -1)
data.adjusted = as_map(p .. 'adjusted')
data.models = {}
for _, token in ipairs(split(redis.call('HGET', p .. 'budget', 'models'))) do
  local mb = read_budget(p .. 'm:' .. token .. ':')
  if mb then
    data.models[token] = scope_data(p .. 'm:' .. token .. ':', mb)
  end
end
return {1, cjson.encode(data)}
