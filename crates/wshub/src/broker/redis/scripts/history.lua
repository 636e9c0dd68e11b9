-- A channel's position and retained publications, read atomically. A channel nobody has
-- published to gets its epoch here, so its first subscriber can recover from it later.
-- KEYS[1] meta hash   KEYS[2] history Stream
-- ARGV[1] epoch to create   ARGV[2] meta ttl (ms)
-- ARGV[3] "since": entries after offset ARGV[4];  "last": the newest ARGV[4] entries
-- Returns {epoch, offset, entries} (entries as XRANGE gives them, oldest first).
local epoch = redis.call("HGET", KEYS[1], "e")
local offset = 0
if not epoch then
  epoch = ARGV[1]
  redis.call("HSET", KEYS[1], "e", epoch, "o", 0)
  redis.call("PEXPIRE", KEYS[1], ARGV[2])
  redis.call("DEL", KEYS[2])
else
  offset = tonumber(redis.call("HGET", KEYS[1], "o") or "0")
end
local entries = {}
local n = tonumber(ARGV[4])
if ARGV[3] == "since" then
  if n < offset then
    entries = redis.call("XRANGE", KEYS[2], (n + 1) .. "-0", "+")
  end
elseif n > 0 then
  local newest = redis.call("XREVRANGE", KEYS[2], "+", "-", "COUNT", n)
  for i = #newest, 1, -1 do
    entries[#entries + 1] = newest[i]
  end
end
return {epoch, offset, entries}
