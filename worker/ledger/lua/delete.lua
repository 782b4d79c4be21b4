-- delete.lua: remove a scope's limits and rate-limit state. Standalone (no prelude).
--
-- KEYS[1] budget hash, KEYS[2] RPM bucket, KEYS[3] TPM bucket (one scope, one slot).
-- ARGV: none.
-- Returns 1 when the scope had limits, 0 when it had none.
-- Idempotent. Membership (a user's team), its label, credits, spend hashes, job records
-- and live reservations stay: they expire or settle by themselves, and limits set again
-- the same period see the spend. A user without a USD limit or credits has no budget.

local had = redis.call('HEXISTS', KEYS[1], 'limit_nanousd') + redis.call('HEXISTS', KEYS[1], 'period')
redis.call('HDEL', KEYS[1], 'limit_nanousd', 'period', 'window_s', 'start_ms', 'rpm', 'tpm')
redis.call('DEL', KEYS[2], KEYS[3])
if redis.call('HLEN', KEYS[1]) == 1 and redis.call('HEXISTS', KEYS[1], 'indexed') == 1 then
  redis.call('DEL', KEYS[1])
end
if had > 0 then
  return 1
end
return 0
