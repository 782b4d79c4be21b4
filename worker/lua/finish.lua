-- finish.lua: record a job's terminal outcome; the first one wins. Runs after common.lua.
--
-- KEYS[1..4] as in common.lua; KEYS[5] job hash; KEYS[6] outcome string.
-- ARGV[1..3] as in common.lua, then:
--   ARGV[4]  job token (the leases member)
--   ARGV[5]  outcome: the job's terminal event (e.g. a refusal)
--   ARGV[6]  outcome_ttl_ms
-- Returns the stored outcome: the one given, or the first one stored before it.
-- Idempotent: the first outcome wins. Meant for jobs that hold no reservation; one that
-- does is released (charged nothing). A settled job stays settled; any other job
-- becomes 'released', so a redelivery answers finished.

local token = ARGV[4]

local now = now_ms()
reclaim(now)

local job = redis.call('HMGET', KEYS[5], 'state', 'cost', 'held', 'period')
local state = job[1]
if state == 'reserved' then
  drop_reservation(now, token, job[4], job[2], job[3])
end
local outcome = keep_first_outcome(KEYS[6], ARGV[5], ARGV[6])
if state ~= 'settled' then
  redis.call('HSET', KEYS[5], 'state', 'released', 'held', '0')
  redis.call('PEXPIRE', KEYS[5], istr(KEEP_MS))
end
return outcome
