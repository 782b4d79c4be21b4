-- park.lua: park a job that waits for budget (on_budget_exceeded: wait). Standalone
-- (no prelude): the park has a slot of its own, {bw:park}, and touches no user's keys.
--
-- KEYS[1] the due zset (member -> next check, ms), KEYS[2] the job's entry hash.
-- ARGV[1] member, ARGV[2] delay_ms (first check, from now), ARGV[3] until_ms (when the
--   wait runs out: Unix ms), ARGV[4] the job's bytes, ARGV[5] its refusal (an event,
--   JSON), ARGV[6] poll_ms (the next pause between checks).
-- Returns {1, parked_ms} when the job is parked now; {0, parked_ms} when it was parked
--   already (a redelivered record): nothing changes.
-- Idempotent by member: the job and its clock are written once.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local parked = redis.call('HGET', KEYS[2], 'parked')
if parked then
  return {0, parked}
end
local at = string.format('%d', now)
redis.call('HSET', KEYS[2], 'job', ARGV[4], 'until', ARGV[3], 'parked', at,
  'refusal', ARGV[5], 'claim', '', 'poll', ARGV[6])
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[2])), ARGV[1])
return {1, at}
