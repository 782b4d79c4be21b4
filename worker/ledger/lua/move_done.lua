-- move_done.lua: end a user's move in its old slot: leave a tombstone that sends its
-- jobs to the new slot, and drop what moved. Runs after common.lua.
--
-- KEYS[1] as in common.lua (the old slot's leases).
-- ARGV[1..2] as in common.lua, then:
--   ARGV[3]  the user's scope prefix in this slot
--   ARGV[4]  where it moved: the new slot's tag ('o:<token>' or 'u:<token>')
-- Takes the user out of this slot's membership indexes. Returns 1. Idempotent. The tombstone (a budget hash holding only 'moved_to') is kept
-- as long as job records are (keep_ms): a reserve that reaches it is sent on.

local p = ARGV[3]
local now = now_ms()
reclaim(now)

unindex_member(p, redis.call('HGET', p .. 'budget', 'team'))
local models = split(redis.call('HGET', p .. 'budget', 'models'))
for _, token in ipairs(models) do
  local mp = p .. 'm:' .. token .. ':'
  redis.call('DEL', mp .. 'budget', mp .. 'rpm', mp .. 'tpm')
end
redis.call('DEL', p .. 'budget', p .. 'rpm', p .. 'tpm', p .. 'grants', p .. 'entries',
  p .. 'adjusted', p .. 'live')
redis.call('HSET', p .. 'budget', 'moved_to', ARGV[4])
redis.call('PEXPIRE', p .. 'budget', istr(KEEP_MS))
return 1
