-- outbox_forget.lua: drop a slot from the outbox index once its outbox was found
-- empty, unless it was marked again since or too recently. Standalone (no prelude).
--
-- KEYS[1] the outbox index {bw:outbox}.
-- ARGV[1] the slot's tag, ARGV[2] its mark time (ms) as the sweeper read it before it
-- found the outbox empty, ARGV[3] grace_ms: how old a mark must be, on the index's clock.
-- Returns 1 when the slot was dropped, else 0.
-- A settle marks the slot before it runs, so a mark younger than the grace may belong
-- to a settle that has not written its events yet; a mark that changed belongs to one
-- the sweeper did not see. Either keeps the slot listed.

local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(score) > now - tonumber(ARGV[3]) then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
