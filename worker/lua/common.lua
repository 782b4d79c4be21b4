-- common.lua: the prelude every per-user ledger script starts with.
--
-- The ledger module prepends this file to each script body before registering it,
-- so the scripts share one copy of the period, lease and rate-limit logic.
--
-- KEYS (every script of one user, all with the hash tag {u:U}):
--   KEYS[1]  budget hash      bw:{u:U}:budget
--   KEYS[2]  leases zset      bw:{u:U}:leases   (job token -> lease deadline, ms)
--   KEYS[3]  RPM bucket hash  bw:{u:U}:rpm
--   KEYS[4]  TPM bucket hash  bw:{u:U}:tpm
--   job scripts also: KEYS[5] job hash, KEYS[6] outcome string
-- ARGV (every script):
--   ARGV[1]  spend key prefix  bw:{u:U}:spend:   (+ period id = the spend hash)
--   ARGV[2]  job key prefix    bw:{u:U}:job:     (+ job token = the job hash)
--   ARGV[3]  keep_ms           how long a final job record and a past period's spend
--                              hash are kept: max(charge_ttl, outcome_ttl), so a job
--                              record always outlives its stored outcome
--
-- Integers only. Amounts stay decimal strings wherever Redis stores them and are
-- applied with HINCRBY; a number computed in Lua is turned into a string with istr()
-- before it reaches Redis (never Redis's own number formatting, which Redis 7.2 broke
-- for multiples of 100,000,000). Lua numbers are doubles: exact below 2^53, which
-- bounds every amount the Python side accepts. Needs Redis >= 7.0 (SET NX GET).

if redis.replicate_commands then
  redis.replicate_commands() -- Redis < 7: TIME before writes needs effects replication
end

local SPEND_PREFIX = ARGV[1]
local JOB_PREFIX = ARGV[2]
local KEEP_MS = tonumber(ARGV[3])
local RECLAIM_BATCH = 100        -- leases reclaimed per call at most: bounded work
local RATE_WINDOW_MS = 60000     -- RPM and TPM are per minute
local DAY_MS = 86400000

local function istr(n)
  return string.format('%d', n)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
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

-- The period containing instant `now` (ms): its id (part of the spend key) and its
-- end (ms, exclusive; -1 for "none"). Calendar periods are UTC; weekly is the ISO
-- week (Monday 00:00) named by its ISO year; rolling windows count from start_ms.
local function period_of(kind, now, start_ms, window_s)
  if kind == 'none' then
    return 'all', -1
  end
  if kind == 'rolling' then
    local w = window_s * 1000
    local k = math.floor((now - start_ms) / w)
    local s = start_ms + k * w
    return 'r' .. istr(s) .. '+' .. istr(window_s), s + w
  end
  local z = math.floor(now / DAY_MS)
  local y, m, d = civil_from_days(z)
  if kind == 'daily' then
    return string.format('%04d-%02d-%02d', y, m, d), (z + 1) * DAY_MS
  elseif kind == 'weekly' then
    local monday = z - (z + 3) % 7 -- 1970-01-01 was a Thursday
    local iso_year = civil_from_days(monday + 3) -- the week's Thursday names its year
    local week = math.floor((monday + 3 - days_from_civil(iso_year, 1, 1)) / 7) + 1
    return string.format('%04d-W%02d', iso_year, week), (monday + 7) * DAY_MS
  elseif kind == 'monthly' then
    local ny, nm = y, m + 1
    if nm == 13 then ny, nm = y + 1, 1 end
    return string.format('%04d-%02d', y, m), days_from_civil(ny, nm, 1) * DAY_MS
  elseif kind == 'yearly' then
    return string.format('%04d', y), days_from_civil(y + 1, 1, 1) * DAY_MS
  end
  error('unknown budget period ' .. tostring(kind))
end

-- The budget, or nil. Empty fields (no window, no RPM/TPM) read as nil numbers.
local function read_budget()
  local b = redis.call('HMGET', KEYS[1], 'limit_nanousd', 'period', 'window_s',
    'start_ms', 'rpm', 'tpm', 'indexed')
  if not b[1] then
    return nil
  end
  return {
    limit_s = b[1], limit = tonumber(b[1]), period = b[2],
    window_s = tonumber(b[3]), start_ms = tonumber(b[4]),
    rpm = tonumber(b[5]), tpm = tonumber(b[6]),
    needs_index = (b[7] == '0') and 1 or 0,
  }
end

local function budget_period(budget, now)
  return period_of(budget.period, now, budget.start_ms, budget.window_s)
end

-- spent and reserved of a spend hash, as the decimal strings Redis holds.
local function read_spend(spend_key)
  local s = redis.call('HMGET', spend_key, 'spent', 'reserved')
  return s[1] or '0', s[2] or '0'
end

-- Give back a reservation's amount to the period it was made in. A spend hash that
-- has already expired is not recreated (it would hold a negative reservation).
local function unreserve(period_id, cost_s)
  if period_id and cost_s and cost_s ~= '0' then
    local spend_key = SPEND_PREFIX .. period_id
    if redis.call('EXISTS', spend_key) == 1 then
      redis.call('HINCRBY', spend_key, 'reserved', '-' .. cost_s)
    end
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

-- Reclaim expired leases: every reservation whose deadline has passed gives its money
-- back to its period and becomes 'lapsed' (not final: the job may reserve again, and a
-- late settle still charges it once). Its tokens stay taken: the call may have run.
-- At most RECLAIM_BATCH per call, so no call does unbounded work.
local function reclaim(now)
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', istr(now), 'LIMIT', '0', istr(RECLAIM_BATCH))
  if #due == 0 then
    return
  end
  for i = 1, #due do
    local job_key = JOB_PREFIX .. due[i]
    local job = redis.call('HMGET', job_key, 'state', 'period', 'cost')
    if job[1] == 'reserved' then
      unreserve(job[2], job[3])
      redis.call('HSET', job_key, 'state', 'lapsed')
      redis.call('PEXPIRE', job_key, istr(KEEP_MS))
    end
  end
  redis.call('ZREM', KEYS[2], unpack(due))
end

-- Drop a live reservation (release, finish): its money goes back to its period, its
-- lease is forgotten and its token estimate is given back to the TPM bucket (no tokens
-- were charged for it).
local function drop_reservation(now, token, period_id, cost_s, held_s)
  unreserve(period_id, cost_s)
  redis.call('ZREM', KEYS[2], token)
  local tokens = tonumber(held_s) or 0
  if tokens > 0 then
    local tpm = tonumber(redis.call('HGET', KEYS[1], 'tpm'))
    bucket_adjust(KEYS[4], tpm, now, -tokens)
  end
end

-- Store a job's terminal outcome unless one is stored already; answer the stored one.
local function keep_first_outcome(outcome_key, outcome, ttl_ms)
  return redis.call('SET', outcome_key, outcome, 'NX', 'GET', 'PX', ttl_ms) or outcome
end

-- ---- end of common.lua; the script body follows ----
