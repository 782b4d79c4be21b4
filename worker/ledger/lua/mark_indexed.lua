-- mark_indexed.lua: complete a budget that reserve created from the default, once the
-- caller has added the user to the users index. Standalone (no prelude).
--
-- KEYS[1] budget hash.
-- ARGV[1] the raw user id (kept for display).
-- Returns 1 when the budget exists (and is marked), 0 when it was deleted meanwhile.
-- Idempotent; never recreates a deleted budget.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'user_id', ARGV[1], 'indexed', '1')
return 1
