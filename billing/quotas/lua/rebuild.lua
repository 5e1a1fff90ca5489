-- KEYS: hash, in-flight zset. ARGV: expire-at ms, final (1/0), number of ledger fields, then
-- (field, messages, request id) per ledger line, then (request id, expiry ms) per database reservation.
local h, z = KEYS[1], KEYS[2]
local expire_at, final, n = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
for i = 0, n - 1 do
  local fld, msgs, rid = ARGV[4 + 3*i], tonumber(ARGV[5 + 3*i]), ARGV[6 + 3*i]
  if redis.call('HSETNX', h, fld, msgs) == 1 then redis.call('HINCRBY', h, 'total', msgs) end
  redis.call('ZREM', z, rid)
end
local rest = 4 + 3*n
while rest < #ARGV do
  redis.call('ZADD', z, 'NX', tonumber(ARGV[rest + 1]), ARGV[rest])
  rest = rest + 2
end
if final == '1' then
  local t = redis.call('TIME')
  redis.call('HSET', h, 'ready', 1, 'checked', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('HSETNX', h, 'total', 0)
end
redis.call('PEXPIREAT', h, expire_at)
if redis.call('EXISTS', z) == 1 then redis.call('PEXPIREAT', z, expire_at) end
return 1
