-- common.lua: the prelude every ledger script of one slot starts with.
--
-- The ledger module prepends this file to each script body before registering it, so
-- the scripts share one copy of the period, scope, lease, credit and rate-limit logic.
--
-- A *slot* is one hash tag: a user's own ({u:U}) or an organisation's ({o:O}), holding
-- every scope below it (docs/ledger.md, "Scopes and keys"). A *scope* is a key prefix P
-- inside the slot; its keys are P..'budget' (hash: limits, membership, label),
-- P..'spend:'..period (hash: spent, reserved, drawn, model:<name>), P..'rpm' and
-- P..'tpm' (GCRA buckets), P..'live' (string: reservations held now), P..'grants'
-- (hash: grant id -> its state) and P..'entries' (list: the credit history).
--
-- KEYS (every script of one slot):
--   KEYS[1]  the slot's leases zset   bw:{tag}:leases   (job token -> lease deadline, ms)
--   job scripts also: KEYS[2] job hash, KEYS[3] outcome string
-- ARGV (every script):
--   ARGV[1]  slot prefix  bw:{tag}:   (job hashes: prefix..'job:'..token)
--   ARGV[2]  keep_ms      how long a final job record and a past period's spend hash
--                         are kept: max(charge_ttl, outcome_ttl), so a job record always
--                         outlives its stored outcome; optionally followed by ':<now_ms>',
--                         a fixed clock instead of Redis's TIME (tests only: the worker
--                         never sends one, so no worker's clock matters)
--
-- Integers only. Amounts stay decimal strings wherever Redis stores them and are
-- applied with HINCRBY; a number computed in Lua is turned into a string with istr()
-- before it reaches Redis (never Redis's own number formatting, which Redis 7.2 broke
-- for multiples of 100,000,000). Lua numbers are doubles: exact below 2^53, which
-- bounds every amount the Python side accepts. Needs Redis >= 7.0 (SET NX GET).

if redis.replicate_commands then
  redis.replicate_commands() -- Redis < 7: TIME before writes needs effects replication
end

local SLOT = ARGV[1]
local KEEP_MS = tonumber(string.match(ARGV[2], '^%d+'))
local FIXED_NOW = tonumber(string.match(ARGV[2], ':(%d+)$'))
local RECLAIM_BATCH = 100        -- leases reclaimed per call at most: bounded work
local RATE_WINDOW_MS = 60000     -- RPM and TPM are per minute
local DAY_MS = 86400000
local MAX_GRANTS = 100           -- active grants per scope: bounded work per step
local HELD = 'h'                 -- a job path's period for a scope its run's hold covers

local function istr(n)
  return string.format('%d', n)
end

local function now_ms()
  if FIXED_NOW then
    return FIXED_NOW
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function split(text)
  local out = {}
  for part in string.gmatch(text or '', '[^ ]+') do
    out[#out + 1] = part
  end
  return out
end

-- Civil dates from day numbers (days since 1970-01-01), proleptic Gregorian, after
-- Howard Hinnant's days_from_civil / civil_from_days.
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m > 2) and (m - 3) or (m + 9)
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = (mp < 10) and (mp + 3) or (mp - 9)
  if m <= 2 then y = y + 1 end
  return y, m, d
end

-- The period containing instant `now` (ms): its id (part of the spend key), its end
-- (ms, exclusive; -1 for "none") and its start (ms). Calendar periods are UTC; weekly is the ISO
-- week (Monday 00:00) named by its ISO year; rolling windows count from start_ms.
local function period_of(kind, now, start_ms, window_s)
  if kind == 'none' or not kind or kind == '' then
    return 'all', -1
  end
  if kind == 'rolling' then
    local w = window_s * 1000
    local k = math.floor((now - start_ms) / w)
    local s = start_ms + k * w
    return 'r' .. istr(s) .. '+' .. istr(window_s), s + w, s
  end
  local z = math.floor(now / DAY_MS)
  local y, m, d = civil_from_days(z)
  if kind == 'daily' then
    return string.format('%04d-%02d-%02d', y, m, d), (z + 1) * DAY_MS, z * DAY_MS
  elseif kind == 'weekly' then
    local monday = z - (z + 3) % 7 -- 1970-01-01 was a Thursday
    local iso_year = civil_from_days(monday + 3) -- the week's Thursday names its year
    local week = math.floor((monday + 3 - days_from_civil(iso_year, 1, 1)) / 7) + 1
    return string.format('%04d-W%02d', iso_year, week), (monday + 7) * DAY_MS, monday * DAY_MS
  elseif kind == 'monthly' then
    local ny, nm = y, m + 1
    if nm == 13 then ny, nm = y + 1, 1 end
    return string.format('%04d-%02d', y, m), days_from_civil(ny, nm, 1) * DAY_MS,
      days_from_civil(y, m, 1) * DAY_MS
  elseif kind == 'yearly' then
    return string.format('%04d', y), days_from_civil(y + 1, 1, 1) * DAY_MS,
      days_from_civil(y, 1, 1) * DAY_MS
  end
  error('unknown budget period ' .. tostring(kind))
end

-- A scope's budget, or nil when it has no record. Its USD limit, RPM and TPM are nil
-- when not set (a team may have only a rate limit, an org only credits).
local function read_budget(p)
  local b = redis.call('HMGET', p .. 'budget', 'limit_nanousd', 'period', 'window_s',
    'start_ms', 'rpm', 'tpm', 'indexed', 'label', 'team', 'moved_to', 'moving_until', 'user_id',
    'moved_from', 'moved_at', 'rollover', 'rollover_since', 'thresholds')
  if not (b[1] or b[2] or b[5] or b[6] or b[8] or b[9] or b[10] or b[12]) then
    return nil
  end
  return {
    p = p,
    limit_s = b[1], limit = tonumber(b[1]), period = b[2],
    window_s = tonumber(b[3]), start_ms = tonumber(b[4]),
    rpm = tonumber(b[5]), tpm = tonumber(b[6]),
    needs_index = (b[7] == '0') and 1 or 0,
    label = b[8] or (b[12] and ('user:' .. b[12])) or '', team = b[9], moved_to = b[10],
    moving_until = tonumber(b[11]), moved_from = b[13], moved_at = tonumber(b[14]),
    rollover = tonumber(b[15]), rollover_since = tonumber(b[16]), thresholds = b[17],
  }
end

-- Whether a user's scope may spend at all: it has a USD limit or credits.
local function has_money(b)
  return b ~= nil and (b.limit ~= nil or redis.call('HLEN', b.p .. 'grants') > 0)
end

local function budget_period(budget, now)
  return period_of(budget.period, now, budget.start_ms, budget.window_s)
end

-- spent, reserved and drawn (charged to credits) of a spend hash, as decimal strings.
local function read_spend(spend_key)
  local s = redis.call('HMGET', spend_key, 'spent', 'reserved', 'drawn')
  return s[1] or '0', s[2] or '0', s[3] or '0'
end

-- ---- rollover: unused allowance carried into the next period, up to a cap ---------
-- A period's carry is fixed when the period is first touched (field 'carried' of its
-- spend hash): what the previous period left of its own allowance (limit plus its
-- carry, less what the allowance paid), at most the scope's rollover cap. A previous
-- period with no spend hash left all of its limit unused, if the scope had rollover
-- for the whole of it (rollover_since) and its hash would still be kept (keep_ms);
-- otherwise nothing carries. Carry is allowance: it is used before credits.

local function carried_in(p, period_id)
  return tonumber(redis.call('HGET', p .. 'spend:' .. period_id, 'carried') or '0')
end

local function carry_into(b, now)
  if not b or not b.rollover or not b.limit or not b.period or b.period == 'none'
      or b.period == '' then
    return 0
  end
  local period_id, period_end, start = budget_period(b, now)
  local key = b.p .. 'spend:' .. period_id
  local fixed = redis.call('HGET', key, 'carried')
  if fixed then
    return tonumber(fixed)
  end
  local prev_id, prev_end, prev_start = period_of(b.period, start - 1, b.start_ms, b.window_s)
  local unused = 0
  if b.rollover_since and b.rollover_since <= prev_start then
    local prev = redis.call('HMGET', b.p .. 'spend:' .. prev_id, 'spent', 'drawn', 'carried')
    if prev[1] or prev[3] then
      unused = b.limit + (tonumber(prev[3]) or 0) - ((tonumber(prev[1]) or 0) - (tonumber(prev[2]) or 0))
    elseif now < prev_end + KEEP_MS then
      unused = b.limit
    end
  end
  local carry = math.max(0, math.min(unused, b.rollover))
  local existed = redis.call('EXISTS', key) == 1
  redis.call('HSET', key, 'carried', istr(carry))
  if not existed then
    redis.call('PEXPIREAT', key, istr(period_end + KEEP_MS))
  end
  return carry
end

-- The scopes a job of the user at prefix `user_p` answers to, in order: the user, its
-- limit on `model` (when it has one), its team, its organisation (when the slot is an
-- organisation's). Membership lives in the user's budget record, so no job field can
-- change it.
local function path_of(user_p, model_token, org_slot, user_budget)
  local path = {user_p}
  if model_token and model_token ~= '' then
    local mp = user_p .. 'm:' .. model_token .. ':'
    if redis.call('EXISTS', mp .. 'budget') == 1 then
      path[#path + 1] = mp
    end
  end
  if user_budget and user_budget.team and user_budget.team ~= '' then
    path[#path + 1] = SLOT .. 't:' .. user_budget.team .. ':'
  end
  if org_slot == '1' then
    path[#path + 1] = SLOT .. 'org:'
  end
  return path
end

-- Give back `cost_s` reserved in scope p's period `period_id`. A spend hash that has
-- already expired is not recreated (it would hold a negative reservation).
local function unreserve(p, period_id, cost_s)
  if period_id and period_id ~= '' and period_id ~= '-' and period_id ~= HELD
      and cost_s and cost_s ~= '0' then
    local spend_key = p .. 'spend:' .. period_id
    if redis.call('EXISTS', spend_key) == 1 then
      redis.call('HINCRBY', spend_key, 'reserved', '-' .. cost_s)
    end
  end
end

local function live_adjust(p, delta)
  local n = redis.call('INCRBY', p .. 'live', delta)
  if n <= 0 then
    redis.call('DEL', p .. 'live')
  end
end

-- A job record's scopes and their periods (a record written before scopes existed holds
-- only its user's period: the slot itself is that user's prefix).
local function job_path(job_path_s, job_periods_s, job_period)
  if job_path_s and job_path_s ~= '' then
    return split(job_path_s), split(job_periods_s)
  end
  return {SLOT}, {job_period}
end

-- ---- per-run budgets ---------------------------------------------------------------
-- A run is a scope below its user, P = <user prefix>..'run:'..R..':', whose USD limit
-- is its cap (period 'none'). Its first job carves the cap out of the user's path
-- (user, team, organisation) as a *hold*: the cap is reserved there, in the periods of
-- that moment, all or nothing. The run's jobs reserve against the run (and the user's
-- limit on the model, and every rate limit on the path), never against the held USD
-- again; their job paths mark the held scopes HELD. A charge of a run's job moves
-- min(cost, hold) of the hold into spent in every held scope (plus any excess, as a
-- late settle would). Closing (by hand, or at its expiry) takes new jobs no more and
-- gives back what the run's live jobs do not hold; when its last live job ends the
-- rest of the hold flows back ('done'). An open run counts as one live reservation of
-- its user, so a user never moves slots while a hold of it exists.
-- The run record: P..'budget' (limit_nanousd = cap, label, run_state open|closed|done,
-- hold, hold_path, hold_periods, hold_ends, user_p, expires), P..'spend:all', P..'live';
-- SLOT..'runs' is the zset of open runs by expiry.

local function is_run(p)
  return p ~= nil and string.match(p, ':run:%x+:$') ~= nil
end

local function read_run(run_p)
  local r = redis.call('HMGET', run_p .. 'budget', 'run_state', 'hold', 'hold_path',
    'hold_periods', 'hold_ends', 'user_p', 'expires')
  if not r[1] then
    return nil
  end
  return {p = run_p, state = r[1], hold = tonumber(r[2]) or 0, path = split(r[3]),
    periods = split(r[4]), ends = split(r[5]), user_p = r[6], expires = tonumber(r[7])}
end

local function live_count(p)
  return tonumber(redis.call('GET', p .. 'live') or '0')
end

-- Give `amount` of the run's hold back to every scope it was carved from.
local function run_unhold(run, amount)
  if amount <= 0 then
    return
  end
  for j = 1, #run.path do
    unreserve(run.path[j], run.periods[j], istr(amount))
  end
  run.hold = run.hold - amount
  redis.call('HSET', run.p .. 'budget', 'hold', istr(run.hold))
end

-- Keep a finished run's record as long as the job records that name it.
local function run_keep(run)
  redis.call('PEXPIRE', run.p .. 'budget', istr(KEEP_MS))
  redis.call('PEXPIRE', run.p .. 'spend:all', istr(KEEP_MS))
end

-- The run is over (closed, no live job): the rest of its hold flows back and its user
-- may move again.
local function run_done(run)
  run_unhold(run, run.hold)
  run.state = 'done'
  redis.call('HSET', run.p .. 'budget', 'run_state', 'done')
  live_adjust(run.user_p, -1)
  run_keep(run)
end

-- Close an open run: it takes no new job, and what its live jobs do not hold flows back.
local function run_close(run)
  redis.call('ZREM', SLOT .. 'runs', run.p)
  if run.state ~= 'open' then
    return
  end
  local reserved = tonumber(redis.call('HGET', run.p .. 'spend:all', 'reserved') or '0')
  run.state = 'closed'
  redis.call('HSET', run.p .. 'budget', 'run_state', 'closed')
  if run.hold > reserved then
    run_unhold(run, run.hold - reserved)
  end
  if live_count(run.p) <= 0 then
    run_done(run)
  end
end

-- After a job of the run at `p` gave up its reservation: a closed run with no live job
-- is done. Nothing for a job outside any run.
local function run_job_ended(p)
  if not is_run(p) then
    return
  end
  local run = read_run(p)
  if run and run.state == 'closed' and live_count(p) <= 0 then
    run_done(run)
  end
end

-- Rate limits: GCRA in its continuous-state leaky-bucket form. The bucket key holds
-- "<level> <at_ms>": `level` token-milliseconds (tokens * 60,000) as of `at_ms`,
-- draining `rate` per ms, so a limit of `rate` per minute is exact in integers.
-- Capacity is rate * 60,000: a burst of at most `rate`, then `rate` per minute spread
-- evenly (never a second full burst at a minute boundary, as fixed windows allow).
local function bucket_level(key, rate, now)
  local stored = redis.call('GET', key)
  if not stored then
    return 0
  end
  local level_s, at_s = string.match(stored, '^(%d+) (%d+)$')
  local elapsed = now - tonumber(at_s)
  if elapsed < 0 then elapsed = 0 end -- a clock that stepped back drains nothing
  local level = tonumber(level_s) - elapsed * rate
  if level < 0 then level = 0 end
  return level
end

local function bucket_store(key, rate, now, level)
  if level <= 0 then
    redis.call('DEL', key) -- an empty bucket and a missing key mean the same
    return
  end
  -- Expires when drained (+1 s), so idle buckets vanish by themselves.
  redis.call('SET', key, istr(level) .. ' ' .. istr(now), 'PX', istr(math.ceil(level / rate) + 1000))
end

-- Would `n` more units fit now? If not: what remains now and the ms until they fit
-- (-1 when n exceeds the limit itself and can never fit).
local function bucket_check(level, rate, n)
  local cap = rate * RATE_WINDOW_MS
  local need = n * RATE_WINDOW_MS
  if level + need <= cap then
    return true, 0, 0
  end
  local remaining = math.floor((cap - level) / RATE_WINDOW_MS)
  if remaining < 0 then remaining = 0 end
  local retry = -1
  if n <= rate then
    retry = math.ceil((level + need - cap) / rate)
  end
  return false, remaining, retry
end

-- Add (or, negative, give back) `delta` units to a bucket, never below empty.
local function bucket_adjust(key, rate, now, delta)
  if not rate or delta == 0 then
    return
  end
  local level = bucket_level(key, rate, now) + delta * RATE_WINDOW_MS
  if level < 0 then level = 0 end
  bucket_store(key, rate, now, level)
end

-- ---- credits: grants and their immutable entries ----------------------------------
-- A grant is stored as "<remaining> <amount> <priority> <effective_ms> <expires_ms>"
-- (expires_ms -1: never). Every change to credits appends one entry to P..'entries'
-- (JSON: id, kind grant|draw|expiry|adjust, amount (signed, decimal string), grant, at
-- ms, note): the credit balance is always the sum of the entries' amounts.

local function entry(p, id, kind, amount, grant, at, note)
  redis.call('RPUSH', p .. 'entries', cjson.encode({
    id = id, kind = kind, amount = amount, grant = grant or '', at = istr(at), note = note or '',
  }))
end

local function parse_grant(value)
  local r, a, pr, ef, ex = string.match(value, '^(%-?%d+) (%d+) (%-?%d+) (%d+) (%-?%d+)$')
  return {remaining = tonumber(r), amount = tonumber(a), priority = tonumber(pr),
    effective = tonumber(ef), expires = tonumber(ex)}
end

local function store_grant(p, id, g)
  redis.call('HSET', p .. 'grants', id, istr(g.remaining) .. ' ' .. istr(g.amount) .. ' ' ..
    istr(g.priority) .. ' ' .. istr(g.effective) .. ' ' .. istr(g.expires))
end

-- The scope's grants usable now, in drawing order (priority, then earliest expiry,
-- then id), after writing an expiry entry for every grant whose time has passed with
-- money left: an expired grant's rest is gone.
local function live_grants(p, now)
  local raw = redis.call('HGETALL', p .. 'grants')
  local usable = {}
  for i = 1, #raw, 2 do
    local id, g = raw[i], parse_grant(raw[i + 1])
    g.id = id
    if g.expires >= 0 and g.expires <= now and g.remaining > 0 then
      entry(p, 'expiry:' .. id, 'expiry', '-' .. istr(g.remaining), id, now, '')
      g.remaining = 0
      store_grant(p, id, g)
    elseif g.remaining > 0 and g.effective <= now then
      usable[#usable + 1] = g
    end
  end
  table.sort(usable, function(a, b)
    if a.priority ~= b.priority then return a.priority < b.priority end
    local ae = a.expires < 0 and math.huge or a.expires
    local be = b.expires < 0 and math.huge or b.expires
    if ae ~= be then return ae < be end
    return a.id < b.id
  end)
  return usable
end

local function credits_of(grants)
  local total = 0
  for i = 1, #grants do
    total = total + grants[i].remaining
  end
  return total
end

-- Draw `amount` from the grants in order, one entry per grant drawn; what was drawn.
local function draw(p, grants, amount, entry_id, now)
  local drawn = 0
  for i = 1, #grants do
    if drawn >= amount then break end
    local g = grants[i]
    local take = math.min(g.remaining, amount - drawn)
    if take > 0 then
      g.remaining = g.remaining - take
      store_grant(p, g.id, g)
      entry(p, entry_id .. ':' .. g.id, 'draw', '-' .. istr(take), g.id, now, '')
      drawn = drawn + take
    end
  end
  return drawn
end

-- ---- money per scope ---------------------------------------------------------------

-- How much more scope `b` may take in its period now: its period allowance not yet
-- used (limit - (spent - drawn)) plus its usable credits, minus what is reserved; nil
-- when the scope caps no money (no USD limit and no credits).
local function usd_room(b, spent, reserved, drawn, credits, carried)
  if not b.limit and credits == 0 then
    if redis.call('HLEN', b.p .. 'grants') == 0 then
      return nil
    end
  end
  return (b.limit or 0) + (carried or 0) - (spent - drawn) + credits - reserved
end

-- What a snapshot of scope `b` reports as remaining: the room left (never below 0), or
-- 0 for a scope that caps no money.
local function remaining_of(b, spent_s, reserved_s, p, period_id, now)
  if not b then
    return '0'
  end
  local _, _, drawn_s = read_spend(p .. 'spend:' .. period_id)
  local credits = credits_of(live_grants(p, now))
  local room = usd_room(b, tonumber(spent_s), tonumber(reserved_s), tonumber(drawn_s), credits,
    carried_in(p, period_id))
  if not room or room < 0 then
    return '0'
  end
  return istr(room)
end

-- ---- spend thresholds and the slot's outbox ----------------------------------------
-- A scope with a USD limit (not a run: its cap is a task's, not a budget's) has
-- thresholds, percents of its limit ('thresholds' in its budget record, e.g.
-- '50 80 95 100'; absent: DEFAULT_THRESHOLDS). The charge that brings a period's spent
-- to a threshold's amount or past it decides the crossing: the field 'th:<pct>' of the
-- period's spend hash is its marker, written with HSETNX, so exactly one script decides
-- each (scope, period, threshold), whatever the concurrency; a repeated settle charges
-- nothing and decides nothing. A reset keeps the markers: each crossing is once per
-- period. The decision appends an event record to the slot's outbox (a stream in the
-- same slot, so on Redis Cluster it is written in the same atomic step); the worker
-- publishes it to Kafka and then deletes it. The record's id is derived from the
-- scope's label, the period id and the percent, so every copy of one crossing (a
-- republished record, a record decided again after the user moved slots) has one id.

local DEFAULT_THRESHOLDS = '50 80 95 100'
local OUTBOX = SLOT .. 'outbox'
local OUTBOX_MAXLEN = '100000' -- bounded even when no worker ever drains it
local decided = 0                -- threshold records this script appended

-- The amount at which `pct` percent of `limit` is reached: ceil(limit * pct / 100),
-- computed so that no intermediate exceeds 2^53 (limit <= 10^15).
local function threshold_amount(limit, pct)
  local whole = math.floor(limit / 100)
  return whole * pct + math.ceil((limit - whole * 100) * pct / 100)
end

local function cross_thresholds(p, b, spend_key, period_id, period_end, spent, reserved_s, now)
  if not b or not b.limit or b.limit <= 0 or is_run(p) then
    return
  end
  for pct_s in string.gmatch(b.thresholds or DEFAULT_THRESHOLDS, '%d+') do
    local pct = tonumber(pct_s)
    if spent >= threshold_amount(b.limit, pct)
        and redis.call('HSETNX', spend_key, 'th:' .. pct_s, istr(now)) == 1 then
      local id = string.sub(redis.sha1hex(b.label .. '|' .. period_id .. '|' .. pct_s), 1, 32)
      redis.call('XADD', OUTBOX, 'MAXLEN', '~', OUTBOX_MAXLEN, '*', 'event', cjson.encode({
        id = id, scope = b.label, limit = 'usd', period_id = period_id,
        period_end = istr(period_end), threshold_pct = pct_s, spent = istr(spent),
        reserved = reserved_s, cap = b.limit_s, at = istr(now),
      }))
      decided = decided + 1
    end
  end
end

-- Charge `cost_s` to scope p (budget record b, or nil) in `period_id`: spent (and
-- per-model spend) grows, and what the period allowance does not cover is drawn from
-- credits, in their order. Answers the new spent, and the scope's remaining after it
-- (as remaining_of would, given `reserved_s` still held), without reading again.
local function charge(p, b, period_id, period_end, cost_s, reserved_s, model, entry_id, now)
  local spend_key = p .. 'spend:' .. period_id
  local spent_s, _, drawn_s = read_spend(spend_key)
  local spent = redis.call('HINCRBY', spend_key, 'spent', cost_s)
  if model and model ~= '' then
    redis.call('HINCRBY', spend_key, 'model:' .. model, cost_s)
  end
  if b and period_end >= 0 then
    -- The hash may be new (a late settle), or older than a lease extended for days.
    redis.call('PEXPIREAT', spend_key, istr(period_end + KEEP_MS))
  end
  if not b then
    return spent, '0'
  end
  cross_thresholds(p, b, spend_key, period_id, period_end, spent, reserved_s, now)
  local grants = live_grants(p, now)
  local drawn = tonumber(drawn_s)
  local carried = carried_in(p, period_id)
  if #grants > 0 then
    local cost = tonumber(cost_s)
    local allowance = (b.limit or 0) + carried - (tonumber(spent_s) - drawn)
    if allowance < 0 then allowance = 0 end
    local from_credits = cost - math.min(cost, allowance)
    if from_credits > 0 then
      local taken = draw(p, grants, from_credits, entry_id, now)
      if taken > 0 then
        drawn = redis.call('HINCRBY', spend_key, 'drawn', istr(taken))
      end
    end
  end
  local credits = credits_of(grants)
  local room = usd_room(b, spent, tonumber(reserved_s), drawn, credits, carried)
  if not room or room < 0 then
    return spent, '0'
  end
  return spent, istr(room)
end

-- Charge a call of the run at `run_p` to the scopes its hold was carved from: in each,
-- min(cost, hold) of the hold becomes spent, and the whole cost is charged (credits
-- drawn as for any call), in the periods the hold was made in.
local function run_charge(run_p, cost_s, model, entry_id, now)
  local run = read_run(run_p)
  if not run then
    return -- cannot happen: a run's record outlives every job record naming it
  end
  local take = math.min(tonumber(cost_s), run.hold)
  for j = 1, #run.path do
    local p, period_id = run.path[j], run.periods[j]
    if period_id ~= '-' then
      if take > 0 then
        unreserve(p, period_id, istr(take))
      end
      local reserved_now = redis.call('HGET', p .. 'spend:' .. period_id, 'reserved') or '0'
      charge(p, read_budget(p), period_id, tonumber(run.ends[j]), cost_s, reserved_now, model,
        entry_id, now)
    end
  end
  if take > 0 then
    run.hold = run.hold - take
    redis.call('HSET', run.p .. 'budget', 'hold', istr(run.hold))
  end
  if run.state == 'done' then
    run_keep(run)
  end
end

local function reclaim_leases(now)
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', istr(now), 'LIMIT', '0', istr(RECLAIM_BATCH))
  if #due == 0 then
    return
  end
  for i = 1, #due do
    local job_key = SLOT .. 'job:' .. due[i]
    local job = redis.call('HMGET', job_key, 'state', 'period', 'cost', 'path', 'periods')
    if job[1] == 'reserved' then
      local path, periods = job_path(job[4], job[5], job[2])
      for j = 1, #path do
        unreserve(path[j], periods[j], job[3])
      end
      live_adjust(path[1], -1)
      run_job_ended(path[1])
      redis.call('HSET', job_key, 'state', 'lapsed')
      redis.call('PEXPIRE', job_key, istr(KEEP_MS))
    end
  end
  redis.call('ZREM', KEYS[1], unpack(due))
end

-- Close every run whose expiry has passed (at most RECLAIM_BATCH per call).
local function reclaim_runs(now)
  local due = redis.call('ZRANGEBYSCORE', SLOT .. 'runs', '-inf', istr(now), 'LIMIT', '0',
    istr(RECLAIM_BATCH))
  for i = 1, #due do
    local run = read_run(due[i])
    if run then
      run_close(run)
    else
      redis.call('ZREM', SLOT .. 'runs', due[i])
    end
  end
end

-- Reclaim expired leases: every reservation whose deadline has passed gives its money
-- back to each scope it was made against and becomes 'lapsed' (not final: the job may
-- reserve again, and a late settle still charges it once). Its tokens stay taken: the
-- call may have run. Then close the runs whose expiry has passed. At most
-- RECLAIM_BATCH of each per call, so no call does unbounded work.
local function reclaim(now)
  reclaim_leases(now)
  reclaim_runs(now)
end

-- Drop a live reservation (release): its money goes back to every scope, its lease is
-- forgotten and its token estimate is given back to the TPM buckets (no tokens were
-- charged for it).
local function drop_reservation(now, token, job)
  local path, periods = job_path(job.path, job.periods, job.period)
  local tokens = tonumber(job.held) or 0
  for j = 1, #path do
    unreserve(path[j], periods[j], job.cost)
    if tokens > 0 then
      local tpm = tonumber(redis.call('HGET', path[j] .. 'budget', 'tpm'))
      bucket_adjust(path[j] .. 'tpm', tpm, now, -tokens)
    end
  end
  live_adjust(path[1], -1)
  redis.call('ZREM', KEYS[1], token)
  run_job_ended(path[1])
end

-- Store a job's terminal outcome unless one is stored already; answer the stored one.
local function keep_first_outcome(outcome_key, outcome, ttl_ms)
  return redis.call('SET', outcome_key, outcome, 'NX', 'GET', 'PX', ttl_ms) or outcome
end

-- Membership indexes of an organisation's slot, so that listing a team's members reads
-- one hash instead of every user: SLOT..'t:'..T..':members' (a team's members) and
-- SLOT..'org:members' (users directly in the organisation, in no team), each a hash of
-- encoded user id -> raw user id. Written in the same step as the user's 'team' field
-- (set_team, move_in, move_done), so an index never disagrees with a record. A user in
-- a slot of its own (its prefix is the slot's) is in no index.
local function members_key(team)
  if team and team ~= '' then
    return SLOT .. 't:' .. team .. ':members'
  end
  return SLOT .. 'org:members'
end

local function member_token(user_p)
  if user_p == SLOT then
    return nil
  end
  return string.sub(user_p, #SLOT + 3, -2) -- user_p is SLOT..'u:'..U..':'
end

local function unindex_member(user_p, team)
  local token = member_token(user_p)
  if token then
    redis.call('HDEL', members_key(team), token)
  end
end

local function index_member(user_p, team, user_id)
  local token = member_token(user_p)
  if token and user_id and user_id ~= '' then
    redis.call('HSET', members_key(team), token, user_id)
  end
end

-- ---- end of common.lua; the script body follows ----
