-- One publication, atomically: idempotency check, the channel's next offset (a new epoch
-- when the meta hash is gone), the Stream entry, expiries, and the pub/sub message.
-- KEYS[1] meta hash {e = epoch, o = offset}   KEYS[2] history Stream
-- KEYS[3] idempotency key (used when ARGV[7] == "1")
-- ARGV[1] pub/sub channel   ARGV[2] data   ARGV[3] history size   ARGV[4] history ttl (ms)
-- ARGV[5] meta ttl (ms)     ARGV[6] epoch to create   ARGV[7] "1": idempotent
-- ARGV[8] idempotency window (ms)   ARGV[9] "PUBLISH" or "SPUBLISH"
-- Returns {epoch, offset, 1 if this is a remembered earlier attempt else 0}.
if ARGV[7] == "1" then
  local earlier = redis.call("GET", KEYS[3])
  if earlier then
    local at = string.find(earlier, ":", 1, true)
    return {string.sub(earlier, 1, at - 1), tonumber(string.sub(earlier, at + 1)), 1}
  end
end
local epoch = redis.call("HGET", KEYS[1], "e")
if not epoch then
  epoch = ARGV[6]
  redis.call("HSET", KEYS[1], "e", epoch, "o", 0)
  redis.call("DEL", KEYS[2])
end
local offset = redis.call("HINCRBY", KEYS[1], "o", 1)
redis.call("PEXPIRE", KEYS[1], ARGV[5])
local size = tonumber(ARGV[3])
if size > 0 then
  redis.call("XADD", KEYS[2], "MAXLEN", size, offset .. "-0", "d", ARGV[2])
  redis.call("PEXPIRE", KEYS[2], ARGV[4])
end
redis.call(ARGV[9], ARGV[1], "p" .. offset .. ":" .. epoch .. ":" .. ARGV[2])
if ARGV[7] == "1" then
  redis.call("SET", KEYS[3], epoch .. ":" .. offset, "PX", ARGV[8])
end
return {epoch, offset, 0}
