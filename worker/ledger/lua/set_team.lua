-- set_team.lua: put a user in a team of the same slot, or in none. Runs after
-- common.lua.
--
-- KEYS[1] as in common.lua (the slot's leases).
-- ARGV[1..2] as in common.lua, then:
--   ARGV[3]  the user's scope prefix
--   ARGV[4]  the raw user id
--   ARGV[5]  the team's encoded id, or '' for no team
-- Returns 1 when done, 0 when the team has no record in this slot.
-- Moves the user between the slot's membership indexes (common.lua) in the same step.
-- Idempotent. Jobs in flight keep the path they were reserved against: they settle
-- into the scopes they were made against, whatever the membership is now.

local user_p, team = ARGV[3], ARGV[5]
local now = now_ms()
reclaim(now)

if team ~= '' and redis.call('EXISTS', SLOT .. 't:' .. team .. ':budget') == 0 then
  return 0
end
local key = user_p .. 'budget'
if redis.call('HEXISTS', key, 'label') == 0 then
  redis.call('HSET', key, 'label', 'user:' .. ARGV[4], 'user_id', ARGV[4], 'indexed', '1')
end
unindex_member(user_p, redis.call('HGET', key, 'team'))
redis.call('HSET', key, 'team', team)
index_member(user_p, team, ARGV[4])
return 1
