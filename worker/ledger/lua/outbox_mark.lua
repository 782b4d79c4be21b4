-- outbox_mark.lua: note that a slot's outbox may receive threshold events, on the
-- index's own clock. Standalone (no prelude).
--
-- KEYS[1] the outbox index {bw:outbox} (sorted set: slot tag -> when last marked, ms).
-- ARGV[1] the slot's tag.
-- Returns the mark's time (ms). Idempotent: marking again only moves the time on.
-- Written before every settle of the slot (at most every few seconds per process), so
-- a sweeper finds every outbox a settle may have written to, even one whose worker died
-- before publishing.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[1])
return now
