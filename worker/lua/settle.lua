-- settle.lua: charge one model call its actual cost, once. Runs after common.lua.
--
-- KEYS[1..4] as in common.lua; KEYS[5] job hash; KEYS[6] outcome string.
-- ARGV[1..3] as in common.lua, then:
--   ARGV[4]  job token (the leases member)
--   ARGV[5]  holder: the token of the reservation the call was made under
--   ARGV[6]  cost_nanousd, decimal string >= 0: the actual cost
--   ARGV[7]  tokens, decimal string >= 0: the actual tokens (for TPM)
--   ARGV[8]  model name (per-model spend field 'model:<name>')
--   ARGV[9]  outcome: the job's terminal event, stored if none is stored yet
--   ARGV[10] outcome_ttl_ms
-- Returns {first(0|1), charged_nanousd, has_outcome, outcome|'',
--          limit_nanousd, spent, reserved, period_end_ms(-1 none)}
--   the snapshot is of the period charged.
-- Idempotent per holder: every holder's call is charged once (the field 'c:<holder>' of
-- the job hash is its charge marker); a repeat answers first = 0 with that charge and
-- changes nothing. The holder of the live reservation moves it to spent at the actual
-- cost (even past the cap). Any other settle (a stale holder whose lease was reclaimed,
-- maybe re-reserved by another worker; a job with no record) is charged on its own, to
-- the period of the job's reservation, and never touches another holder's reservation.
-- The outcome stored first (by settle, release or finish) is kept. The job becomes
-- 'settled' (final) unless another holder still holds a live reservation on it.

local token, holder, cost_s, tokens_s = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local marker = 'c:' .. holder

local now = now_ms()
reclaim(now)

local job = redis.call('HMGET', KEYS[5], 'state', 'holder', 'cost', 'held', 'period',
  'period_end', marker, 'snap_limit', 'snap_spent', 'snap_reserved')
local state, job_holder = job[1], job[2]

if job[7] then
  local outcome = redis.call('GET', KEYS[6])
  return {0, job[7], outcome and 1 or 0, outcome or '', job[8] or '0', job[9] or '0',
    job[10] or '0', job[6] or '-1'}
end

local budget = read_budget()
local period_id, period_end = job[5], tonumber(job[6])
if period_id == '' then period_id = nil end
if not period_id and budget then
  period_id, period_end = budget_period(budget, now)
end
local own = job_holder == holder

if state == 'reserved' and own then
  unreserve(job[5], job[3])
  redis.call('ZREM', KEYS[2], token)
end

local limit_s, spent, reserved = '0', '0', '0'
if budget then limit_s = budget.limit_s end
if period_id then
  local spend_key = SPEND_PREFIX .. period_id
  spent = istr(redis.call('HINCRBY', spend_key, 'spent', cost_s)) -- stored below: a string
  redis.call('HINCRBY', spend_key, 'model:' .. ARGV[8], cost_s)
  if period_end >= 0 then
    -- The hash may be new (a late settle), or older than a lease extended for days.
    redis.call('PEXPIREAT', spend_key, istr(period_end + KEEP_MS))
  end
  reserved = redis.call('HGET', spend_key, 'reserved') or '0'
else
  period_end = -1
end

-- TPM: the holder's estimate was taken at reserve ('held'); take the difference to the
-- actual (a refund when the estimate was higher). A stale call's estimate was taken by
-- its own reserve and is not the job's 'held' any more: its tokens drain as they are.
if own and budget and budget.tpm then
  bucket_adjust(KEYS[4], budget.tpm, now, tonumber(tokens_s) - (tonumber(job[4]) or 0))
end

local outcome = keep_first_outcome(KEYS[6], ARGV[9], ARGV[10])
redis.call('HSET', KEYS[5], marker, cost_s)
if state ~= 'reserved' or own then
  redis.call('HSET', KEYS[5], 'state', 'settled', 'held', '0',
    'period', period_id or '', 'period_end', istr(period_end),
    'snap_limit', limit_s, 'snap_spent', spent, 'snap_reserved', reserved)
  if not state then
    redis.call('HSET', KEYS[5], 'holder', holder)
  end
  redis.call('PEXPIRE', KEYS[5], istr(KEEP_MS))
end
return {1, cost_s, 1, outcome, limit_s, spent, reserved, period_end}
