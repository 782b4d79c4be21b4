-- reserve.lua: hold a job's estimated cost and rate allowance against every limit of
-- the user, all or nothing. Runs after common.lua.
--
-- KEYS[1..4] as in common.lua; KEYS[5] job hash; KEYS[6] outcome string (unused: a job
--   record outlives its outcome, so the job's state alone says whether it is final).
-- ARGV[1..3] as in common.lua, then:
--   ARGV[4]  job token (the leases member; KEYS[5] = job prefix .. token)
--   ARGV[5]  holder (worker id, free text)
--   ARGV[6]  cost_nanousd, decimal string >= 0: the estimate, an upper bound
--   ARGV[7]  tokens, decimal string >= 0: the token estimate (for TPM)
--   ARGV[8]  lease_ms > 0: the reservation lives until now + lease_ms (Redis clock)
--   ARGV[9]  the default budget's limit_nanousd, or '' for no default; when given,
--   ARGV[10..13]  its period, window_s, rpm, tpm ('' = none)
-- Returns one flat array, by its first element:
--   {1, existing(0|1), cost_nanousd, tokens, lease_deadline_ms, holder,
--       limit_nanousd, spent, reserved, period_end_ms(-1 none), needs_index(0|1)}
--   {2, limit('usd'|'rpm'|'tpm'), remaining, retry_after_ms(-1 never),
--       limit_nanousd, spent, reserved, period_end_ms, needs_index}        refused
--   {3}                                                                   no budget
--   {4, has_outcome, outcome|'', has_snapshot, limit_nanousd, spent, reserved,
--       period_end_ms}                                                    finished
--   needs_index = 1: the budget was made from the default and is not yet in the
--   users index (another slot): the caller adds it there.
-- Idempotent per job: a live reservation answers {1, 1, ...} with its holder and
-- changes nothing; a settled or released job answers {4, ...} with its first outcome
-- and, when settled, the snapshot of its settle. A refusal changes nothing (expired
-- leases are still reclaimed). A lapsed job (lease reclaimed, or released without an
-- outcome) is reserved afresh.

local token, holder = ARGV[4], ARGV[5]
local cost_s, tokens_s = ARGV[6], ARGV[7]
local cost, tokens, lease_ms = tonumber(cost_s), tonumber(tokens_s), tonumber(ARGV[8])

local now = now_ms()
reclaim(now)

local job = redis.call('HMGET', KEYS[5], 'state', 'holder', 'cost', 'tokens', 'deadline',
  'period', 'period_end', 'snap_limit', 'snap_spent', 'snap_reserved')
local state = job[1]

if state == 'settled' or state == 'released' then
  local outcome = redis.call('GET', KEYS[6])
  if state == 'settled' then
    return {4, outcome and 1 or 0, outcome or '', 1, job[8], job[9], job[10], job[7]}
  end
  return {4, outcome and 1 or 0, outcome or '', 0, '0', '0', '0', '-1'}
end

local budget = read_budget()

if state == 'reserved' then
  local spent, reserved = read_spend(SPEND_PREFIX .. job[6])
  local limit_s, needs_index = '0', 0
  if budget then limit_s, needs_index = budget.limit_s, budget.needs_index end
  return {1, 1, job[3], job[4], job[5], job[2], limit_s, spent, reserved, job[7], needs_index}
end

if not budget then
  if ARGV[9] == '' then
    return {3}
  end
  -- Create the default budget in this same step, so two first jobs of a new user
  -- cannot both see "no budget". The users index lives in another slot: the caller
  -- writes it afterwards ('indexed' = 0 until then).
  local start_ms = ''
  if ARGV[10] == 'rolling' then start_ms = istr(now) end
  redis.call('HSET', KEYS[1], 'limit_nanousd', ARGV[9], 'period', ARGV[10],
    'window_s', ARGV[11], 'start_ms', start_ms, 'rpm', ARGV[12], 'tpm', ARGV[13], 'indexed', '0')
  budget = read_budget()
end

local period_id, period_end = budget_period(budget, now)
local spend_key = SPEND_PREFIX .. period_id
local spend = redis.call('HMGET', spend_key, 'spent', 'reserved')
local spent_s, reserved_s = spend[1] or '0', spend[2] or '0'
local spent, reserved = tonumber(spent_s), tonumber(reserved_s)

-- Every limit that applies to this job. More scopes (team, org) would add entries
-- here; all of them are checked before any is changed.
local limits = {{name = 'usd', kind = 'spend'}}
if budget.rpm then
  limits[#limits + 1] = {name = 'rpm', kind = 'rate', key = KEYS[3], rate = budget.rpm, n = 1}
end
if budget.tpm and tokens > 0 then
  limits[#limits + 1] = {name = 'tpm', kind = 'rate', key = KEYS[4], rate = budget.tpm, n = tokens}
end

-- Check all. When several refuse, answer the one that lifts last (-1 = never).
local refused, refused_remaining, refused_retry = nil, 0, 0
for i = 1, #limits do
  local l = limits[i]
  local ok, remaining, retry = true, 0, 0
  if l.kind == 'spend' then
    if spent + reserved + cost > budget.limit then
      ok = false
      remaining = budget.limit - spent - reserved
      if remaining < 0 then remaining = 0 end
      if cost > budget.limit or period_end < 0 then retry = -1 else retry = period_end - now end
    end
  else
    l.level = bucket_level(l.key, l.rate, now)
    ok, remaining, retry = bucket_check(l.level, l.rate, l.n)
  end
  if not ok and (refused == nil or refused_retry ~= -1 and (retry == -1 or retry > refused_retry)) then
    refused, refused_remaining, refused_retry = l.name, remaining, retry
  end
end
if refused then
  return {2, refused, refused_remaining, refused_retry, budget.limit_s, spent_s, reserved_s,
    period_end, budget.needs_index}
end

-- Apply all.
local new_reserved = redis.call('HINCRBY', spend_key, 'reserved', cost_s)
if not spend[1] and not spend[2] and period_end >= 0 then
  -- A new period's spend hash: it lives until the period ends, plus the keep time for
  -- late settles.
  redis.call('PEXPIREAT', spend_key, istr(period_end + KEEP_MS))
end
local held_s = '0'
for i = 1, #limits do
  local l = limits[i]
  if l.kind == 'rate' then
    bucket_store(l.key, l.rate, now, l.level + l.n * RATE_WINDOW_MS)
    if l.name == 'tpm' then held_s = tokens_s end
  end
end
local deadline = now + lease_ms
redis.call('HSET', KEYS[5], 'state', 'reserved', 'holder', holder, 'cost', cost_s,
  'tokens', tokens_s, 'held', held_s, 'deadline', istr(deadline),
  'period', period_id, 'period_end', istr(period_end))
if state then
  redis.call('PERSIST', KEYS[5]) -- a lapsed record had a TTL; a live one ends by script only
end
redis.call('ZADD', KEYS[2], istr(deadline), token)
return {1, 0, cost_s, tokens_s, deadline, holder, budget.limit_s, spent_s, new_reserved,
  period_end, budget.needs_index}
