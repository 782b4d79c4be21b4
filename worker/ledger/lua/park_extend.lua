-- park_extend.lua: renew one worker's claims on the parked jobs it runs. Standalone.
--
-- KEYS[1] the due zset.
-- ARGV[1] entry prefix, ARGV[2] the claim token, ARGV[3] lease_ms, ARGV[4..] members.
-- Returns how many claims were renewed (a member whose claim is another's, or that
--   left the park, is skipped).
-- Idempotent.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lapse = string.format('%d', now + tonumber(ARGV[3]))
local renewed = 0
for i = 4, #ARGV do
  if redis.call('HGET', ARGV[1] .. ARGV[i], 'claim') == ARGV[2] then
    redis.call('ZADD', KEYS[1], 'XX', lapse, ARGV[i])
    renewed = renewed + 1
  end
end
return renewed
