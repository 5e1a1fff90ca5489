-- KEYS: (hash, in-flight zset) per counter, then the access epoch. ARGV: mode, request id, reservation
-- ttl ms, reconcile interval ms, the access epoch the caller's grant was read at ('' when it was
-- confirmed already), then (limit, expire-at ms) per counter.
-- Returns {status, reconcile, used1, inflight1, used2, inflight2, ...}; status 0 admitted (or peeked),
-- 1 refused, 2 some counter must first be rebuilt from the ledger (then the indexes follow), 3 the
-- access epoch moved on (nothing was held).
local n = (#KEYS - 1) / 2
if ARGV[5] ~= '' and (redis.call('GET', KEYS[#KEYS]) or '0') ~= ARGV[5] then return {3} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode, rid = ARGV[1], ARGV[2]
local ttl, reconcile_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local missing = {}
for i = 1, n do
  if redis.call('HEXISTS', KEYS[2*i-1], 'ready') == 0 then missing[#missing+1] = i end
end
if #missing > 0 then return {2, unpack(missing)} end
local out = {0, 0}
local refused = false
for i = 1, n do
  local h, z = KEYS[2*i-1], KEYS[2*i]
  local limit = tonumber(ARGV[4 + 2*i])
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
  local vals = redis.call('HMGET', h, 'total', 'checked')
  local used = tonumber(vals[1] or '0')
  local inflight = redis.call('ZCARD', z)
  -- A retried reserve (its first reply lost) must not count its own earlier hold against itself.
  local mine = 0
  if redis.call('ZSCORE', z, rid) then mine = 1 end
  if used + inflight - mine + 1 > limit then refused = true end
  inflight = inflight - mine
  if now - tonumber(vals[2] or '0') > reconcile_ms then
    redis.call('HSET', h, 'checked', now)
    out[2] = 1
  end
  out[#out+1] = used
  out[#out+1] = inflight
end
if refused and mode == 'reserve' then
  for i = 1, n do redis.call('ZREM', KEYS[2*i], rid) end
  out[1] = 1
  return out
end
if mode == 'reserve' then
  for i = 1, n do
    local z = KEYS[2*i]
    redis.call('ZADD', z, now + ttl, rid)
    redis.call('PEXPIREAT', z, tonumber(ARGV[5 + 2*i]))
    out[4 + 2*(i-1)] = out[4 + 2*(i-1)] + 1
  end
end
return out
