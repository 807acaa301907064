-- Checks and charges every item of one ShouldRateLimit request atomically.
-- ARGV[1] = now (µs since epoch), ARGV[2] = item count, then 6 per item:
--   algorithm (f|s|t), limit, hits, enforce (1|0), p1, p2
--   f: KEYS = window;        p1 = TTL (s)
--   s: KEYS = prev, current; p1 = unit (µs), p2 = elapsed in window (µs)
--   t: KEYS = bucket;        p1 = emission interval T (µs), p2 = tolerance tau (µs)
-- Returns {rejected, then per item: over (1|0), state A, state B}.
-- Requests that do not fit charge nothing; a rejected request charges no item.
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local out = {0}
local fits, firstkey = {}, {}
local ki = 1
local rejected = 0
for i = 1, n do
  local ai = 3 + (i - 1) * 6
  local alg, L, h = ARGV[ai], tonumber(ARGV[ai + 1]), tonumber(ARGV[ai + 2])
  local p1, p2 = tonumber(ARGV[ai + 4]), tonumber(ARGV[ai + 5])
  local a, b, ok = tonumber(redis.call('GET', KEYS[ki]) or '0'), 0, false
  firstkey[i] = ki
  if alg == 's' then
    b = tonumber(redis.call('GET', KEYS[ki + 1]) or '0')
    ok = a * ((p1 - p2) / p1) + b + h <= L
    ki = ki + 2
  elseif alg == 't' then
    ok = L > 0 and math.max(a, now) + h * p1 - now <= p2
    ki = ki + 1
  else
    ok = a + h <= L
    ki = ki + 1
  end
  fits[i] = ok
  if not ok and ARGV[ai + 3] == '1' then rejected = 1 end
  out[#out + 1] = ok and 0 or 1
  out[#out + 1] = a
  out[#out + 1] = b
end
out[1] = rejected
if rejected == 1 then return out end
for i = 1, n do
  local ai = 3 + (i - 1) * 6
  local alg, h = ARGV[ai], tonumber(ARGV[ai + 2])
  local p1, p2 = tonumber(ARGV[ai + 4]), tonumber(ARGV[ai + 5])
  local k = KEYS[firstkey[i]]
  if fits[i] and h > 0 then
    if alg == 'f' then
      -- TTL once per window key: only the hit that creates it sets it.
      if redis.call('INCRBY', k, h) == h then redis.call('EXPIRE', k, p1) end
    elseif alg == 's' then
      k = KEYS[firstkey[i] + 1]
      if redis.call('INCRBY', k, h) == h then redis.call('EXPIRE', k, 2 * p1 / 1000000) end
    else
      local tat = math.max(out[3 * i], now) + h * p1
      redis.call('SET', k, string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1)
    end
  end
end
return out
