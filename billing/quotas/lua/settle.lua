-- KEYS: (hash, in-flight zset) per counter. ARGV: request id, ledger field, messages, then expire-at ms
-- per counter. Works whether or not the counter is ready: a rebuild merges with what settles wrote.
local rid, fld, msgs = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2*i-1], KEYS[2*i]
  redis.call('ZREM', z, rid)
  if msgs ~= 0 and redis.call('HSETNX', h, fld, msgs) == 1 then
    redis.call('HINCRBY', h, 'total', msgs)
    redis.call('PEXPIREAT', h, tonumber(ARGV[3 + i]))
  end
end
return 1
