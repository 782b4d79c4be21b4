-- park_done.lua: remove a job from the park once its event is published. Standalone.
--
-- KEYS[1] the due zset, KEYS[2] the job's entry hash.
-- ARGV[1] member, ARGV[2] the claim token.
-- Returns 1 when removed (or already gone), 0 when another worker's claim holds it
--   (this claim lapsed): that worker answers the job, from the ledger's stored outcome.
-- Idempotent.

local claim = redis.call('HGET', KEYS[2], 'claim')
if claim and claim ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
