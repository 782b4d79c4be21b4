-- run.lua: read a per-run budget, or close it. Runs after common.lua.
--
-- KEYS[1] as in common.lua (the slot's leases).
-- ARGV[1..2] as in common.lua, then:
--   ARGV[3]  the user's scope prefix in this slot
--   ARGV[4]  the run, encoded
--   ARGV[5]  'close' to close the run (idempotent), 'show' to read it
-- Returns {0} when the user has no such run (or it is long gone), else
--   {1, run_state (open|closed|done), cap, spent, reserved, hold, expires_ms, label,
--    live jobs}
-- Closing takes new jobs no more and gives back what the run's live jobs do not hold;
-- the rest flows back when its last live job ends (common.lua, per-run budgets).
-- Reading changes nothing but what every step does (reclaiming leases and runs due).

local now = now_ms()
reclaim(now)

local run_p = ARGV[3] .. 'run:' .. ARGV[4] .. ':'
local run = read_run(run_p)
if not run then
  return {0}
end
if ARGV[5] == 'close' then
  run_close(run)
end
local b = read_budget(run_p)
local spent_s, reserved_s = read_spend(run_p .. 'spend:all')
return {1, run.state, b.limit_s, spent_s, reserved_s, istr(run.hold), istr(run.expires),
  b.label, istr(live_count(run_p))}
