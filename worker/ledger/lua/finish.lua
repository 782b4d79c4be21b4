-- finish.lua: record the terminal outcome of a job that holds no reservation (a
-- refusal); the first outcome wins. Runs after common.lua.
--
-- KEYS[1..3] as in common.lua (leases, job hash, outcome).
-- ARGV[1..2] as in common.lua, then:
--   ARGV[3]  job token (the leases member, unused: nothing is reserved)
--   ARGV[4]  outcome: the job's terminal event (e.g. a refusal)
--   ARGV[5]  outcome_ttl_ms
--   ARGV[6]  the user's scope prefix in this slot
-- Returns {1, outcome, has_snapshot, limit_nanousd, spent, reserved, period_end_ms,
--   remaining}: the
--   stored outcome (the one given, or the first stored before it) and, when the job was
--   settled, the snapshot of its settle; or {2, holder} when a live reservation of
--   `holder` exists: another delivery of the job is running it, and its outcome, not
--   this one, will answer the job; or {5, slot tag} when the job has no record here
--   and its user moved to that slot (ask there).
-- Idempotent: the first outcome wins. A settled job stays settled; any other job
-- becomes 'released', so a redelivery answers finished.

local now = now_ms()
reclaim(now)

local job = redis.call('HMGET', KEYS[2], 'state', 'holder', 'snap_limit', 'snap_spent',
  'snap_reserved', 'period_end', 'snap_remaining')
local state = job[1]
if not state then
  local moved = redis.call('HGET', ARGV[6] .. 'budget', 'moved_to')
  if moved then
    return {5, moved}
  end
end
if state == 'reserved' then
  return {2, job[2]}
end
local outcome = keep_first_outcome(KEYS[3], ARGV[4], ARGV[5])
if state == 'settled' then
  return {1, outcome, 1, job[3], job[4], job[5], job[6], job[7] or '0'}
end
redis.call('HSET', KEYS[2], 'state', 'released', 'held', '0')
redis.call('PEXPIRE', KEYS[2], istr(KEEP_MS))
return {1, outcome, 0, '0', '0', '0', '-1', '0'}
