-- adjust.lua: change a scope's credit balance by hand, once. Runs after common.lua.
--
-- KEYS[1] as in common.lua (the slot's leases).
-- ARGV[1..2] as in common.lua, then:
--   ARGV[3]  the scope's prefix
--   ARGV[4]  adjustment id (free text without spaces; the idempotency key)
--   ARGV[5]  amount_nanousd, a signed decimal string, not 0
--   ARGV[6]  a note (kept in the entry)
-- Returns {1, applied, amount} for a new adjustment (a negative one takes what the
-- credits hold, at most), {0, applied, amount} when the id exists (nothing changed:
-- the stored adjustment's applied and asked amounts, so the caller can tell a retry
-- from a reused id), {3} when the scope has no record. Amounts are decimal strings;
-- the asked amount is '' for a debit stored before asked amounts were kept.
-- 'adjusted' maps each id to "<applied> <asked>" (older entries: "<applied>").
-- A positive adjustment is credit that never expires and draws last; a negative one
-- is taken from the grants in their drawing order. Either appends 'adjust' entries.

local p, id, note = ARGV[3], ARGV[4], ARGV[6]
local now = now_ms()
reclaim(now)

if not read_budget(p) then
  return {3}
end
local done = redis.call('HGET', p .. 'adjusted', id)
if done then
  local parts = split(done)
  local asked = parts[2]
  if not asked then -- stored before asked amounts were kept: a credit applies whole
    asked = (tonumber(parts[1]) > 0) and parts[1] or ''
  end
  return {0, parts[1], asked}
end
local amount = tonumber(ARGV[5])
local applied
if amount > 0 then
  store_grant(p, 'adjust:' .. id, {remaining = amount, amount = amount, priority = 2147483647,
    effective = 0, expires = -1})
  entry(p, 'adjust:' .. id, 'adjust', ARGV[5], 'adjust:' .. id, now, note)
  applied = ARGV[5]
else
  local taken = 0
  local want = -amount
  for _, g in ipairs(live_grants(p, now)) do
    if taken >= want then break end
    local take = math.min(g.remaining, want - taken)
    g.remaining = g.remaining - take
    store_grant(p, g.id, g)
    entry(p, 'adjust:' .. id .. ':' .. g.id, 'adjust', '-' .. istr(take), g.id, now, note)
    taken = taken + take
  end
  applied = '-' .. istr(taken)
end
redis.call('HSET', p .. 'adjusted', id, applied .. ' ' .. ARGV[5])
return {1, applied, ARGV[5]}
