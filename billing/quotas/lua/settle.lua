-- KEYS: (hash, in-flight zset) per counter. ARGV: request id, ledger field, messages, how many of the
-- counters are the request's own, then expire-at ms per counter.
-- The request's own counters (it was reserved against them) take the line whether or not they are
-- ready: a rebuild merges with what settles wrote. The others (limits the request had none of) take
-- it only if they exist, so a counter kept while its limit was lifted stays exact when it returns,
-- and a missing one is left to be rebuilt from the ledger.
local rid, fld, msgs, own = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2*i-1], KEYS[2*i]
  if i <= own then redis.call('ZREM', z, rid) end
  if msgs ~= 0 and (i <= own or redis.call('EXISTS', h) == 1) and redis.call('HSETNX', h, fld, msgs) == 1 then
    redis.call('HINCRBY', h, 'total', msgs)
    redis.call('PEXPIREAT', h, tonumber(ARGV[4 + i]))
  end
end
return 1
