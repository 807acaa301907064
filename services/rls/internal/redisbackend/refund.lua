-- Takes back hits charged by the slot parts of a request that another slot
-- part rejected (Redis Cluster only). KEYS: one per item (the key that was
-- charged); ARGV: per item algorithm (1|2|3) and amount (hits, or hits*T µs
-- for a token bucket).
for i = 1, #KEYS do
  local alg, amount = ARGV[2 * i - 1], tonumber(ARGV[2 * i])
  local v = redis.call('GET', KEYS[i])
  if v then
    if alg == '3' then
      redis.call('SET', KEYS[i], string.format('%.0f', tonumber(v) - amount), 'KEEPTTL')
    else
      redis.call('DECRBY', KEYS[i], amount)
    end
  end
end
return 0
