-- delete.lua: remove a user's budget and rate-limit state. Standalone (no prelude).
--
-- KEYS[1] budget hash, KEYS[2] RPM bucket, KEYS[3] TPM bucket (one user, one slot).
-- ARGV: none.
-- Returns 1 when a budget was removed, 0 when there was none.
-- Idempotent. Spend hashes, job records and live reservations stay: they expire or
-- settle by themselves, and a budget created again the same period sees the spend.

local existed = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return existed
