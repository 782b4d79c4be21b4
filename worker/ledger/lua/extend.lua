-- extend.lua: push a live reservation's lease deadline. Runs after common.lua.
--
-- KEYS[1..3] as in common.lua (leases, job hash, outcome: unused).
-- ARGV[1..2] as in common.lua, then:
--   ARGV[3]  job token (the leases member)
--   ARGV[4]  holder: must be the reservation's holder
--   ARGV[5]  lease_ms >= 0: the new deadline is now + lease_ms (Redis clock); 0 makes
--            the lease due at once (the next script touching the user reclaims it)
-- Returns 1 when the lease was set, 0 when the job holds no live reservation of this
-- holder (reclaimed, released, settled, unknown or held by another worker).
-- Idempotent: setting the same deadline twice is one deadline.

local token, holder, lease_ms = ARGV[3], ARGV[4], tonumber(ARGV[5])

local now = now_ms()
reclaim(now)

local job = redis.call('HMGET', KEYS[2], 'state', 'holder')
if job[1] ~= 'reserved' or job[2] ~= holder then
  return 0
end
local deadline = istr(now + lease_ms)
redis.call('HSET', KEYS[2], 'deadline', deadline)
redis.call('ZADD', KEYS[1], deadline, token)
return 1
