-- park_again.lua: put a claimed job back in the park until its next check. Standalone.
--
-- KEYS[1] the due zset, KEYS[2] the job's entry hash.
-- ARGV[1] member, ARGV[2] the claim token, ARGV[3] delay_ms (next check, from now),
--   ARGV[4] its latest refusal ('' keeps the one stored), ARGV[5] poll_ms.
-- Returns 1, or 0 when the claim is not this token's (it lapsed and another worker
--   holds the job now, or the job left the park): nothing changes.
-- Idempotent for one claim.

if redis.call('HGET', KEYS[2], 'claim') ~= ARGV[2] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], 'claim', '', 'poll', ARGV[5])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[2], 'refusal', ARGV[4])
end
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[3])), ARGV[1])
return 1
