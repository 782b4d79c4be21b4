-- reserve.lua: hold a job's estimated cost and rate allowance against every limit of
-- every scope on its path (user, the user's limit on the model, team, organisation),
-- all or nothing. Runs after common.lua.
--
-- KEYS[1..3] as in common.lua (leases, job hash, outcome).
-- ARGV[1..2] as in common.lua, then:
--   ARGV[3]  job token (the leases member; KEYS[2] = slot .. 'job:' .. token)
--   ARGV[4]  holder (worker id and a random part, free text)
--   ARGV[5]  cost_nanousd, decimal string >= 0: the estimate, an upper bound
--   ARGV[6]  tokens, decimal string >= 0: the token estimate (for TPM)
--   ARGV[7]  lease_ms > 0: the reservation lives until now + lease_ms (Redis clock)
--   ARGV[8]  the user's scope prefix in this slot
--   ARGV[9]  the job's model, encoded (its per-model scope, when the user has one)
--   ARGV[10] '1' when the slot is an organisation's (its org scope is on every path)
--   ARGV[11] the raw user id (the label of a default budget)
--   ARGV[12] the default budget's limit_nanousd, or '' for no default; when given,
--   ARGV[13..16]  its period, window_s, rpm, tpm ('' = none)
--   ARGV[17] '1' when the caller has checked the user's previous slot for this job
--   ARGV[18] the job's run, encoded, or '' for none; when given,
--   ARGV[19..21]  the run's cap (nano-USD), its time to live (ms, at most keep_ms) and
--                 its raw id (its label): used only by the run's first job
-- Returns one flat array, by its first element:
--   {1, existing(0|1), cost_nanousd, tokens, lease_deadline_ms, holder,
--       limit_nanousd, spent, reserved, period_end_ms(-1 none), needs_index,
--       remaining}                                                        reserved
--   {2, limit('usd'|'rpm'|'tpm'), remaining, retry_after_ms(-1 never),
--       limit_nanousd, spent, reserved, period_end_ms, needs_index, scope label,
--       remaining[, 1 when the job's run is closed]}
--                                        refused (the snapshot: the refusing scope's)
--   {3}                                                                   no budget
--   {4, has_outcome, outcome|'', has_snapshot, limit_nanousd, spent, reserved,
--       period_end_ms, remaining}                                         finished
--   A snapshot's remaining is what the scope could still take: its allowance left plus
--   its credits, less what is reserved (never below 0).
--   {5, slot prefix}     the user moved to another slot: ask there
--   {6}                  the user is moving between slots now: ask again shortly
--   A job of a run answers the run's snapshot, and a run's first job is refused (by the
--   scope that cannot hold the cap) unless every scope on its user's path can hold the
--   whole cap; a job of a closed run is refused by the run, never to lift.
--   {7, slot tag}        the user moved here from that slot within keep_ms and this
--                        slot has no record of the job: look for it there first (a
--                        job that ended before the move is final), then ask again
--                        with ARGV[17] = '1'
--   The snapshot of a reservation is the user's. needs_index = 1: the budget was made
--   from the default and is not yet in the users index (another slot).
-- Idempotent per job: a live reservation answers {1, 1, ...} with its holder and
-- changes nothing; a settled or released job answers {4, ...} with its first outcome
-- and, when settled, the snapshot of its settle. A refusal changes nothing (expired
-- leases are still reclaimed, expired credits written off). A lapsed job (lease
-- reclaimed, or released without an outcome) is reserved afresh.

local token, holder = ARGV[3], ARGV[4]
local cost_s, tokens_s = ARGV[5], ARGV[6]
local cost, tokens, lease_ms = tonumber(cost_s), tonumber(tokens_s), tonumber(ARGV[7])
local user_p = ARGV[8]

local now = now_ms()
reclaim(now)

local job = redis.call('HMGET', KEYS[2], 'state', 'holder', 'cost', 'tokens', 'deadline',
  'period', 'period_end', 'snap_limit', 'snap_spent', 'snap_reserved', 'snap_remaining', 'path')
local state = job[1]

if state == 'settled' or state == 'released' then
  local outcome = redis.call('GET', KEYS[3])
  if state == 'settled' then
    return {4, outcome and 1 or 0, outcome or '', 1, job[8] or '0', job[9] or '0',
      job[10] or '0', job[7] or '-1', job[11] or '0'}
  end
  return {4, outcome and 1 or 0, outcome or '', 0, '0', '0', '0', '-1', '0'}
end

local budget = read_budget(user_p)
if budget and budget.moved_to then
  return {5, budget.moved_to}
end
if budget and budget.moving_until and budget.moving_until > now then
  return {6}
end

if not state and budget and budget.moved_from and ARGV[17] ~= '1'
    and budget.moved_at and now < budget.moved_at + KEEP_MS then
  return {7, budget.moved_from}
end

if state == 'reserved' then
  local first_p = split(job[12])[1] or user_p -- the run of a run's job, else the user
  local first_b = (first_p == user_p) and budget or read_budget(first_p)
  local spent, reserved = read_spend(first_p .. 'spend:' .. (job[6] or 'all'))
  local limit_s, needs_index = '0', 0
  if first_b then limit_s = first_b.limit_s or '0' end
  if budget then needs_index = budget.needs_index end
  local rem = remaining_of(first_b, spent, reserved, first_p, job[6] or 'all', now)
  return {1, 1, job[3], job[4], job[5], job[2], limit_s, spent, reserved, job[7], needs_index, rem}
end

if not has_money(budget) and ARGV[12] ~= '' then
  -- Create the default budget in this same step, so two first jobs of a new user
  -- cannot both see "no budget". The users index lives in another slot: the caller
  -- writes it afterwards ('indexed' = 0 until then).
  local start_ms = ''
  if ARGV[13] == 'rolling' then start_ms = istr(now) end
  local indexed = (budget and budget.needs_index == 0) and '1' or '0'
  redis.call('HSET', user_p .. 'budget', 'user_id', ARGV[11], 'label', 'user:' .. ARGV[11],
    'limit_nanousd', ARGV[12], 'period', ARGV[13], 'window_s', ARGV[14],
    'start_ms', start_ms, 'rpm', ARGV[15], 'tpm', ARGV[16], 'indexed', indexed)
  budget = read_budget(user_p)
end

-- Every limit of every scope on the path, checked before any is changed. A path on
-- which no scope caps money (no USD limit, no credits) has no budget: a user may spend
-- on its team's or organisation's money alone, never on none.
if not budget then
  return {3}
end
local path = path_of(user_p, ARGV[9], ARGV[10], budget)
local budgets, any_money = {}, false
for i = 1, #path do
  budgets[i] = (i == 1) and budget or read_budget(path[i])
  if has_money(budgets[i]) then any_money = true end
end
if not any_money then
  return {3}
end

-- A job of a run: the run comes first on its path, and the scopes above it are held.
local held, run_p, new_run = {}, nil, false
if ARGV[18] ~= '' then
  run_p = user_p .. 'run:' .. ARGV[18] .. ':'
  local run = read_run(run_p)
  local run_b
  if run then
    run_b = read_budget(run_p)
    if run.state ~= 'open' then
      local spent_s, reserved_s = read_spend(run_p .. 'spend:all')
      return {2, 'usd', '0', '-1', run_b.limit_s, spent_s, reserved_s, '-1',
        budget.needs_index, run_b.label, '0', 1}
    end
  else
    new_run = true
    run_b = {p = run_p, limit_s = ARGV[19], limit = tonumber(ARGV[19]), period = 'none',
      label = 'run:' .. ARGV[11] .. '/' .. ARGV[21]}
  end
  local full, full_b = {run_p}, {run_b}
  for i = 1, #path do
    full[i + 1], full_b[i + 1] = path[i], budgets[i]
    held[i + 1] = path[i] ~= user_p .. 'm:' .. ARGV[9] .. ':' -- a model limit is not held
  end
  path, budgets = full, full_b
end
local cap_s = ARGV[19]

-- What a snapshot of scope s reports as remaining once `reserved` is held: its room
-- (allowance left plus usable credits, less what is reserved), never below 0; 0 for a
-- scope that caps no money. The same as common.lua's remaining_of, from values read.
local function remaining_in(s, reserved)
  if not s.room then
    return '0'
  end
  local room = (s.b.limit or 0) + s.carried - (tonumber(s.spent_s) - s.drawn) + s.credits
    - reserved
  if room < 0 then
    return '0'
  end
  return istr(room)
end

local scopes, limits = {}, {}
for i = 1, #path do
  local b = budgets[i]
  local s = {p = path[i], b = b, period = '', period_end = -1, spent_s = '0', reserved_s = '0',
    carried = 0}
  if b then
    s.period, s.period_end = budget_period(b, now)
    s.spend_key = path[i] .. 'spend:' .. s.period
    local drawn_s
    s.spent_s, s.reserved_s, drawn_s = read_spend(s.spend_key)
    local credits = credits_of(live_grants(path[i], now))
    s.drawn, s.credits = tonumber(drawn_s), credits
    s.carried = carry_into(b, now)
    local room = usd_room(b, tonumber(s.spent_s), tonumber(s.reserved_s), s.drawn, credits,
      s.carried)
    s.room, s.held = room, held[i]
    if room and (new_run or not held[i]) then
      -- cap: the most this scope could ever allow in this period; amount: what it is
      -- asked to hold (a new run's cap, in every scope the run is carved from)
      limits[#limits + 1] = {scope = s, name = 'usd', kind = 'spend', room = room,
        cap = (b.limit or 0) + s.carried + credits, amount = held[i] and tonumber(cap_s) or cost}
    end
    if b.rpm then
      limits[#limits + 1] = {scope = s, name = 'rpm', kind = 'rate', key = path[i] .. 'rpm',
        rate = b.rpm, n = 1}
    end
    if b.tpm and tokens > 0 then
      limits[#limits + 1] = {scope = s, name = 'tpm', kind = 'rate', key = path[i] .. 'tpm',
        rate = b.tpm, n = tokens}
      s.tpm = true
    end
  end
  scopes[i] = s
end

-- Check all. When several refuse, answer the one that lifts last (-1 = never).
local refused, refused_remaining, refused_retry = nil, 0, 0
for i = 1, #limits do
  local l = limits[i]
  local ok, remaining, retry = true, 0, 0
  if l.kind == 'spend' then
    if l.amount > l.room then
      ok = false
      remaining = math.max(0, l.room)
      if l.amount > l.cap or l.scope.period_end < 0 then
        retry = -1
      else
        retry = l.scope.period_end - now
      end
    end
  else
    l.level = bucket_level(l.key, l.rate, now)
    ok, remaining, retry = bucket_check(l.level, l.rate, l.n)
  end
  if not ok and (refused == nil or refused_retry ~= -1 and (retry == -1 or retry > refused_retry)) then
    refused, refused_remaining, refused_retry = l, remaining, retry
  end
end
if refused then
  local s = refused.scope
  local rem = remaining_in(s, tonumber(s.reserved_s))
  return {2, refused.name, istr(refused_remaining), istr(refused_retry), s.b.limit_s or '0',
    s.spent_s, s.reserved_s, s.period_end, budget.needs_index, s.b.label, rem}
end

-- Apply all.
local held_s = '0'
local expires = now + math.min(tonumber(ARGV[20] ~= '' and ARGV[20] or '0'), KEEP_MS)
local hold_path, hold_periods, hold_ends = {}, {}, {}
if new_run then
  redis.call('HSET', run_p .. 'budget', 'label', scopes[1].b.label, 'limit_nanousd', cap_s,
    'period', 'none', 'run_state', 'open', 'user_p', user_p, 'expires', istr(expires))
  scopes[1].b = read_budget(run_p)
end
for i = 1, #scopes do
  local s = scopes[i]
  if s.b and s.held then
    if new_run then
      -- A new run's hold: its cap, reserved in this scope's current period.
      local existed = redis.call('EXISTS', s.spend_key) == 1
      redis.call('HINCRBY', s.spend_key, 'reserved', cap_s)
      if not existed and s.period_end >= 0 then
        redis.call('PEXPIREAT', s.spend_key, istr(s.period_end + KEEP_MS))
      end
      hold_path[#hold_path + 1] = s.p
      hold_periods[#hold_periods + 1] = s.period
      hold_ends[#hold_ends + 1] = istr(s.period_end)
    end
  elseif s.b then
    local existed = redis.call('EXISTS', s.spend_key) == 1
    s.new_reserved = redis.call('HINCRBY', s.spend_key, 'reserved', cost_s)
    if not existed and s.period_end >= 0 then
      -- A new period's spend hash: it lives until the period ends, plus the keep time
      -- for late settles.
      redis.call('PEXPIREAT', s.spend_key, istr(s.period_end + KEEP_MS))
    end
  end
end
for i = 1, #limits do
  local l = limits[i]
  if l.kind == 'rate' then
    bucket_store(l.key, l.rate, now, l.level + l.n * RATE_WINDOW_MS)
    if l.name == 'tpm' then held_s = tokens_s end
  end
end
if new_run then
  redis.call('HSET', run_p .. 'budget', 'hold', cap_s, 'hold_path', table.concat(hold_path, ' '),
    'hold_periods', table.concat(hold_periods, ' '), 'hold_ends', table.concat(hold_ends, ' '))
  redis.call('ZADD', SLOT .. 'runs', istr(expires), run_p)
  live_adjust(user_p, 1) -- the hold: the user does not move slots while it exists
end
local periods = {}
for i = 1, #scopes do
  if scopes[i].held then
    periods[i] = HELD -- held by the run: its charge reaches this scope through the run
  else
    periods[i] = scopes[i].b and scopes[i].period or '-' -- '-': nothing reserved there
  end
end
local user = scopes[1]
local deadline = now + lease_ms
redis.call('HSET', KEYS[2], 'state', 'reserved', 'holder', holder, 'cost', cost_s,
  'tokens', tokens_s, 'held', held_s, 'deadline', istr(deadline),
  'period', user.period, 'period_end', istr(user.period_end),
  'path', table.concat(path, ' '), 'periods', table.concat(periods, ' '))
if state then
  redis.call('PERSIST', KEYS[2]) -- a lapsed record had a TTL; a live one ends by script only
end
redis.call('ZADD', KEYS[1], istr(deadline), token)
live_adjust(path[1], 1)
local rem = remaining_in(user, user.new_reserved)
return {1, 0, cost_s, tokens_s, deadline, holder, user.b.limit_s or '0', user.spent_s,
  user.new_reserved, user.period_end, budget.needs_index, rem}
