-- release.lua: drop a holder's reservation, in every scope it holds, and charge nothing. Runs after common.lua.
--
-- KEYS[1..3] as in common.lua (leases, job hash, outcome).
-- ARGV[1..2] as in common.lua, then:
--   ARGV[3]  job token (the leases member)
--   ARGV[4]  holder: the token of the reservation to drop
--   ARGV[5]  '1' when an outcome is given, else '0'
--   ARGV[6]  outcome: the job's terminal event (ignored when ARGV[5] = '0')
--   ARGV[7]  outcome_ttl_ms
--   ARGV[8]  the user's scope prefix in this slot
-- Returns 1 when the holder's live reservation was dropped, else 0; {5, slot tag} when
-- the job has no record here and its user moved to that slot (ask there).
-- Idempotent. Only the holder of a live reservation drops it; while another holder
-- holds one, a stale holder's release changes nothing (its outcome is not stored
-- either: the live holder will answer the job). With an outcome the job becomes final
-- ('released'): a redelivery answers finished with the first outcome. Without one the
-- job only gives up its hold ('lapsed'), so a redelivery may reserve it again (a
-- shutdown hands the job on). A settled job stays settled. The token estimate goes back
-- to the TPM bucket.

local token, holder = ARGV[3], ARGV[4]

local now = now_ms()
reclaim(now)

local job = redis.call('HMGET', KEYS[2], 'state', 'cost', 'held', 'period', 'holder', 'path',
  'periods')
local state = job[1]
if not state then
  local moved = redis.call('HGET', ARGV[8] .. 'budget', 'moved_to')
  if moved then
    return {5, moved}
  end
end
if state == 'settled' or state == 'released' then
  return 0
end
if state == 'reserved' and job[5] ~= holder then
  return 0
end

local dropped = 0
if state == 'reserved' then
  drop_reservation(now, token,
    {cost = job[2], held = job[3], period = job[4], path = job[6], periods = job[7]})
  dropped = 1
end

if ARGV[5] == '1' then
  keep_first_outcome(KEYS[3], ARGV[6], ARGV[7])
  redis.call('HSET', KEYS[2], 'state', 'released', 'held', '0')
  redis.call('PEXPIRE', KEYS[2], istr(KEEP_MS))
elseif dropped == 1 then
  redis.call('HSET', KEYS[2], 'state', 'lapsed', 'held', '0')
  redis.call('PEXPIRE', KEYS[2], istr(KEEP_MS))
end
return dropped
