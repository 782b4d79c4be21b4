-- grant.lua: add a credit grant to a scope, once. Runs after common.lua.
--
-- KEYS[1] as in common.lua (the slot's leases).
-- ARGV[1..2] as in common.lua, then:
--   ARGV[3]  the scope's prefix
--   ARGV[4]  grant id (free text without spaces; the idempotency key)
--   ARGV[5]  amount_nanousd, decimal string > 0
--   ARGV[6]  priority (lower draws first), decimal string
--   ARGV[7]  effective_ms: not usable before (0: at once)
--   ARGV[8]  expires_ms, or -1 for never
-- Returns {1, remaining, amount, priority, effective_ms, expires_ms} for a new grant,
-- {0, ...the same of the stored one} when the id exists (nothing changed), {2} when
-- the scope already holds the most grants it may (MAX_GRANTS), {3} when the scope has
-- no record.
-- A new grant appends one 'grant' entry (+amount) to the scope's entries.

local p, id = ARGV[3], ARGV[4]
local now = now_ms()
reclaim(now)

if not read_budget(p) then
  return {3}
end
local stored = redis.call('HGET', p .. 'grants', id)
if stored then
  local g = parse_grant(stored)
  return {0, istr(g.remaining), istr(g.amount), istr(g.priority), istr(g.effective), istr(g.expires)}
end
local active = live_grants(p, now)
if #active >= MAX_GRANTS then
  return {2}
end
local g = {remaining = tonumber(ARGV[5]), amount = tonumber(ARGV[5]), priority = tonumber(ARGV[6]),
  effective = tonumber(ARGV[7]), expires = tonumber(ARGV[8])}
store_grant(p, id, g)
entry(p, 'grant:' .. id, 'grant', ARGV[5], id, now, '')
return {1, ARGV[5], ARGV[5], ARGV[6], ARGV[7], ARGV[8]}
