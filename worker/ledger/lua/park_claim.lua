-- park_claim.lua: claim parked jobs that are due, for one worker. Standalone.
--
-- KEYS[1] the due zset.
-- ARGV[1] entry prefix (bw:{bw:park}:job:), ARGV[2] how many at most, ARGV[3]
--   lease_ms (how long the claim holds unless renewed), ARGV[4] the claim token.
-- Returns a flat array, six items per claimed job: member, job bytes, until_ms,
--   parked_ms, refusal, poll_ms.
-- A claimed job's score moves to now + lease_ms, so no other worker claims it while
-- the claim holds; a claim whose worker died lapses and the job is due again. A member
-- without an entry (removed half-way by hand) is dropped.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lapse = string.format('%d', now + tonumber(ARGV[3]))
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now),
  'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, member in ipairs(due) do
  local key = ARGV[1] .. member
  local f = redis.call('HMGET', key, 'job', 'until', 'parked', 'refusal', 'poll')
  if not f[1] then
    redis.call('ZREM', KEYS[1], member)
  else
    redis.call('ZADD', KEYS[1], lapse, member)
    redis.call('HSET', key, 'claim', ARGV[4])
    out[#out + 1] = member
    out[#out + 1] = f[1]
    out[#out + 1] = f[2]
    out[#out + 1] = f[3]
    out[#out + 1] = f[4] or ''
    out[#out + 1] = f[5] or '1000'
  end
end
return out
