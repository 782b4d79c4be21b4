-- release.lua: drop a holder's reservation and charge nothing. Runs after common.lua.
--
-- KEYS[1..4] as in common.lua; KEYS[5] job hash; KEYS[6] outcome string.
-- ARGV[1..3] as in common.lua, then:
--   ARGV[4]  job token (the leases member)
--   ARGV[5]  holder: the token of the reservation to drop
--   ARGV[6]  '1' when an outcome is given, else '0'
--   ARGV[7]  outcome: the job's terminal event (ignored when ARGV[6] = '0')
--   ARGV[8]  outcome_ttl_ms
-- Returns 1 when the holder's live reservation was dropped, else 0.
-- Idempotent. Only the holder of a live reservation drops it; while another holder
-- holds one, a stale holder's release changes nothing (its outcome is not stored
-- either: the live holder will answer the job). With an outcome the job becomes final
-- ('released'): a redelivery answers finished with the first outcome. Without one the
-- job only gives up its hold ('lapsed'), so a redelivery may reserve it again (a
-- shutdown hands the job on). A settled job stays settled. The token estimate goes back
-- to the TPM bucket.

local token, holder = ARGV[4], ARGV[5]

local now = now_ms()
reclaim(now)

local job = redis.call('HMGET', KEYS[5], 'state', 'cost', 'held', 'period', 'holder')
local state = job[1]
if state == 'settled' or state == 'released' then
  return 0
end
if state == 'reserved' and job[5] ~= holder then
  return 0
end

local dropped = 0
if state == 'reserved' then
  drop_reservation(now, token, job[4], job[2], job[3])
  dropped = 1
end

if ARGV[6] == '1' then
  keep_first_outcome(KEYS[6], ARGV[7], ARGV[8])
  redis.call('HSET', KEYS[5], 'state', 'released', 'held', '0')
  redis.call('PEXPIRE', KEYS[5], istr(KEEP_MS))
elseif dropped == 1 then
  redis.call('HSET', KEYS[5], 'state', 'lapsed', 'held', '0')
  redis.call('PEXPIRE', KEYS[5], istr(KEEP_MS))
end
return dropped
