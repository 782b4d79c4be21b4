-- settle.lua: charge one model call its actual cost, once, to every scope its job
-- answers to. Runs after common.lua.
--
-- KEYS[1..3] as in common.lua (leases, job hash, outcome).
-- ARGV[1..2] as in common.lua, then:
--   ARGV[3]  job token (the leases member)
--   ARGV[4]  holder: the token of the reservation the call was made under
--   ARGV[5]  cost_nanousd, decimal string >= 0: the actual cost
--   ARGV[6]  tokens, decimal string >= 0: the actual tokens (for TPM)
--   ARGV[7]  model name (per-model spend field 'model:<name>')
--   ARGV[8]  outcome: the job's terminal event, stored if none is stored yet
--   ARGV[9]  outcome_ttl_ms
--   ARGV[10] the user's scope prefix in this slot (a job with no record is charged to
--   ARGV[11] the encoded model, and ARGV[12] '1' for an organisation's slot: the path
--            the job would take now)
-- ... or {5, slot tag} when the job has no record and its user moved to that slot.
-- Returns {first(0|1), charged_nanousd, has_outcome, outcome|'',
--          limit_nanousd, spent, reserved, period_end_ms(-1 none), remaining, decided}
--   the snapshot is the user's, of the period charged; `decided` is how many spend
--   thresholds this settle crossed, each appended to the slot's outbox (common.lua).
-- Idempotent per holder: every holder's call is charged once (the field 'c:<holder>' of
-- the job hash is its charge marker); a repeat answers first = 0 with that charge and
-- changes nothing. The holder of the live reservation moves it to spent at the actual
-- cost (even past the cap), in every scope it was reserved against, whatever the
-- user's membership is now. Any other settle (a stale holder whose lease was
-- reclaimed, maybe re-reserved by another worker; a job with no record) is charged on
-- its own, to the scopes and periods of the job's reservation (or, with no record, the
-- user's path and periods now), and never touches another holder's reservation. What
-- a scope's period allowance does not cover is drawn from its credits. The outcome
-- stored first (by settle, release or finish) is kept. A job of a run is charged to the
-- run, and through it to the scopes its hold was carved from (common.lua, run_charge).
-- The job becomes 'settled'
-- (final) unless another holder still holds a live reservation on it.

local token, holder, cost_s, tokens_s = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local model = ARGV[7]
local marker = 'c:' .. holder

local now = now_ms()
reclaim(now)

local job = redis.call('HMGET', KEYS[2], 'state', 'holder', 'cost', 'held', 'period',
  'period_end', marker, 'snap_limit', 'snap_spent', 'snap_reserved', 'path', 'periods',
  'snap_remaining')
local state, job_holder = job[1], job[2]

if job[7] then
  local outcome = redis.call('GET', KEYS[3])
  return {0, job[7], outcome and 1 or 0, outcome or '', job[8] or '0', job[9] or '0',
    job[10] or '0', job[6] or '-1', job[13] or '0', 0}
end

local path, periods
if job[11] or (job[5] and job[5] ~= '') then
  path, periods = job_path(job[11], job[12], job[5])
else
  -- No reservation was ever recorded (no record, or a refusal's): charge the path and
  -- periods the job would take now.
  local user_b = read_budget(ARGV[10])
  if user_b and user_b.moved_to then
    return {5, user_b.moved_to}
  end
  path = path_of(ARGV[10], ARGV[11], ARGV[12], user_b)
  periods = {}
  for i = 1, #path do
    local b = (i == 1) and user_b or read_budget(path[i])
    periods[i] = b and budget_period(b, now) or '-'
  end
end

local own = job_holder == holder and state == 'reserved'
local tokens = tonumber(tokens_s)
local held = tonumber(job[4]) or 0
if own then
  redis.call('ZREM', KEYS[1], token)
  live_adjust(path[1], -1)
end

local user_b = read_budget(path[1])
local limit_s, spent, reserved, period_end, remaining = '0', '0', '0', -1, '0'
for i = 1, #path do
  local p, period_id = path[i], periods[i]
  local b = (i == 1) and user_b or read_budget(p)
  if (period_id == '-' or not period_id) and b then
    -- Nothing was reserved in this scope (it had no budget record then): the call is
    -- charged to the period it is in now.
    period_id = budget_period(b, now)
    periods[i] = period_id
  end
  if period_id == HELD then
    -- Held by the job's run: its money is charged through the run, below; TPM here.
    if own and b and b.tpm then
      bucket_adjust(p .. 'tpm', b.tpm, now, tokens - held)
    end
  elseif period_id == '-' or not period_id then
    periods[i] = '-' -- no budget record, then or now: nothing to charge here
  else
    local end_ms = -1
    local current, current_end
    if b then current, current_end = budget_period(b, now) end
    if current == period_id then
      end_ms = current_end
    elseif i == 1 and job[6] and job[6] ~= '' then
      end_ms = tonumber(job[6]) -- the reservation's period, past by now
    end
    if own then
      unreserve(p, period_id, job[3])
    end
    local reserved_now = redis.call('HGET', p .. 'spend:' .. period_id, 'reserved') or '0'
    local charged, left = charge(p, b, period_id, end_ms, cost_s, reserved_now, model,
      'draw:' .. token .. ':' .. holder, now)
    if own and b and b.tpm then
      -- TPM: the estimate was taken at reserve ('held'); take the difference to the
      -- actual (a refund when the estimate was higher). A stale call's estimate was
      -- taken by its own reserve and is not the job's 'held' any more.
      bucket_adjust(p .. 'tpm', b.tpm, now, tokens - held)
    end
    if i == 1 then
      if b then limit_s = b.limit_s or '0' end
      spent = istr(charged)
      reserved = reserved_now
      period_end = end_ms
      remaining = left
    end
  end
end

if is_run(path[1]) then
  run_charge(path[1], cost_s, model, 'draw:' .. token .. ':' .. holder, now)
  if own then
    run_job_ended(path[1])
  end
end

local outcome = keep_first_outcome(KEYS[3], ARGV[8], ARGV[9])
redis.call('HSET', KEYS[2], marker, cost_s)
if state ~= 'reserved' or own then
  redis.call('HSET', KEYS[2], 'state', 'settled', 'held', '0',
    'period', periods[1] ~= '-' and periods[1] or '', 'period_end', istr(period_end),
    'path', table.concat(path, ' '), 'periods', table.concat(periods, ' '),
    'snap_limit', limit_s, 'snap_spent', spent, 'snap_reserved', reserved,
    'snap_remaining', remaining)
  if not state then
    redis.call('HSET', KEYS[2], 'holder', holder)
  end
  redis.call('PEXPIRE', KEYS[2], istr(KEEP_MS))
end
return {1, cost_s, 1, outcome, limit_s, spent, reserved, period_end, remaining, decided}
