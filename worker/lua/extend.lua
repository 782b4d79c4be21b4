-- extend.lua: push a live reservation's lease deadline. Runs after common.lua.
--
-- KEYS[1..4] as in common.lua; KEYS[5] job hash; KEYS[6] outcome string (unused).
-- ARGV[1..3] as in common.lua, then:
--   ARGV[4]  job token (the leases member)
--   ARGV[5]  holder: must be the reservation's holder
--   ARGV[6]  lease_ms >= 0: the new deadline is now + lease_ms (Redis clock); 0 makes
--            the lease due at once (the next script touching the user reclaims it)
-- Returns 1 when the lease was set, 0 when the job holds no live reservation of this
-- holder (reclaimed, released, settled, unknown or held by another worker).
-- Idempotent: setting the same deadline twice is one deadline.

local token, holder, lease_ms = ARGV[4], ARGV[5], tonumber(ARGV[6])

local now = now_ms()
reclaim(now)

local job = redis.call('HMGET', KEYS[5], 'state', 'holder')
if job[1] ~= 'reserved' or job[2] ~= holder then
  return 0
end
local deadline = istr(now + lease_ms)
redis.call('HSET', KEYS[5], 'deadline', deadline)
redis.call('ZADD', KEYS[2], deadline, token)
return 1
