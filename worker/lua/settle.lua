-- settle.lua: charge a job its actual cost, once. Runs after common.lua.
--
-- KEYS[1..4] as in common.lua; KEYS[5] job hash; KEYS[6] outcome string.
-- ARGV[1..3] as in common.lua, then:
--   ARGV[4]  job token (the leases member)
--   ARGV[5]  cost_nanousd, decimal string >= 0: the actual cost
--   ARGV[6]  tokens, decimal string >= 0: the actual tokens (for TPM)
--   ARGV[7]  model name (per-model spend field 'model:<name>')
--   ARGV[8]  outcome: the job's terminal event, stored if none is stored yet
--   ARGV[9]  outcome_ttl_ms
-- Returns {first(0|1), charged_nanousd, has_outcome, outcome|'',
--          limit_nanousd, spent, reserved, period_end_ms(-1 none)}
--   the snapshot is of the period charged (the one the reservation was made in).
-- Idempotent per job: a settled job answers first = 0 with its first charge, outcome
-- and snapshot, and changes nothing. The charge goes to the period the reservation was
-- made in, even past the cap. A live reservation is moved to spent; one already
-- reclaimed (lapsed) or released is not given back twice: only the charge is added.
-- A job with no record at all is charged to the current period. The outcome stored
-- first (by settle, release or finish) is kept.

local token, cost_s, tokens_s = ARGV[4], ARGV[5], ARGV[6]

local now = now_ms()
reclaim(now)

local job = redis.call('HMGET', KEYS[5], 'state', 'cost', 'held', 'period', 'period_end',
  'charged', 'snap_limit', 'snap_spent', 'snap_reserved')
local state = job[1]

if state == 'settled' then
  local outcome = redis.call('GET', KEYS[6])
  return {0, job[6], outcome and 1 or 0, outcome or '', job[7], job[8], job[9], job[5]}
end

local budget = read_budget()
local period_id, period_end = job[4], tonumber(job[5])
if not period_id and budget then
  period_id, period_end = budget_period(budget, now)
end

if state == 'reserved' then
  unreserve(job[4], job[2])
  redis.call('ZREM', KEYS[2], token)
end

local limit_s, spent, reserved = '0', '0', '0'
if budget then limit_s = budget.limit_s end
if period_id then
  local spend_key = SPEND_PREFIX .. period_id
  spent = istr(redis.call('HINCRBY', spend_key, 'spent', cost_s)) -- stored below: a string
  redis.call('HINCRBY', spend_key, 'model:' .. ARGV[7], cost_s)
  if period_end >= 0 then
    -- The hash may be new (a late settle), or older than a lease extended for days.
    redis.call('PEXPIREAT', spend_key, istr(period_end + KEEP_MS))
  end
  reserved = redis.call('HGET', spend_key, 'reserved') or '0'
else
  period_end = -1
end

-- TPM: the estimate was taken at reserve ('held'); take the difference to the actual
-- (a refund when the estimate was higher).
if budget and budget.tpm then
  bucket_adjust(KEYS[4], budget.tpm, now, tonumber(tokens_s) - (tonumber(job[3]) or 0))
end

local outcome = keep_first_outcome(KEYS[6], ARGV[8], ARGV[9])
redis.call('HSET', KEYS[5], 'state', 'settled', 'charged', cost_s, 'held', '0',
  'period', period_id or '', 'period_end', istr(period_end),
  'snap_limit', limit_s, 'snap_spent', spent, 'snap_reserved', reserved)
redis.call('PEXPIRE', KEYS[5], istr(KEEP_MS))
return {1, cost_s, 1, outcome, limit_s, spent, reserved, period_end}
