-- The live members of a presence hash whose expiry times sit in a sorted set (Redis 7.0
-- has no per-field expiry): expired ones are removed, then the rest are listed.
-- Used for channel presence and for the node list alike.
-- KEYS[1] hash member -> info   KEYS[2] sorted set member -> expiry (ms since the epoch)
-- ARGV[1] now (ms since the epoch)
-- Returns the hash as {member, info, member, info, ...}.
local expired = redis.call("ZRANGEBYSCORE", KEYS[2], "-inf", ARGV[1])
for _, member in ipairs(expired) do
  redis.call("HDEL", KEYS[1], member)
end
if #expired > 0 then
  redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", ARGV[1])
end
return redis.call("HGETALL", KEYS[1])
