-- Checks and charges a batch of ShouldRateLimit requests, each atomically
-- and in order (the whole batch runs as one script, so it is serializable).
-- KEYS: every request's keys, in order. ARGV, per request:
--   now (µs since the epoch), item count, then 6 numbers per item:
--   algorithm (1 fixed, 2 sliding, 3 token bucket), limit, hits, enforce, p1, p2
--   enforce: 0 count only (shadow), 1 enforced, 2 quota group member
--   fixed:   1 key  (window);        p1 = TTL (s)
--   sliding: 2 keys (prev, current); p1 = unit (µs), p2 = elapsed in window (µs)
--   bucket:  1 key;                  p1 = emission interval T (µs), p2 = tolerance tau (µs)
-- Returns one string: per request "rejected:over,A,B,over,A,B", joined by "|".
-- Hits that do not fit charge nothing; a rejected request charges no item.
-- A request is rejected when an enforced item does not fit, or when it has
-- quota group members and none of them fits (limiter.Rejected).
-- Items are evaluated in order, each seeing the hits charged by the items
-- before it (as the anchor's INCRBY pipeline does). Windows are charged
-- optimistically (INCRBY, then DECRBY back at once if the hits do not fit,
-- so later items never see them, or at the end if the request is
-- rejected); a charged bucket is restored if the request is rejected. Undo
-- runs last item first, so a key repeated in the request gets its first
-- value back. The script is atomic, so nobody sees the intermediate values.
-- The per-item tables are shared by every request of the batch (each slot
-- is written before it is read): a batch allocates them once.
local ki, ai, nargv = 1, 1, #ARGV
local out, key, added, parts = {}, {}, {}, {}
while ai <= nargv do
  local now, n = tonumber(ARGV[ai]), tonumber(ARGV[ai + 1])
  ai = ai + 2
  local rejected, quota, quotafits = 0, false, false
  for i = 1, n do
    local b0 = ai + (i - 1) * 6
    local alg, L, h = ARGV[b0], tonumber(ARGV[b0 + 1]), tonumber(ARGV[b0 + 2])
    local p1, p2 = tonumber(ARGV[b0 + 4]), tonumber(ARGV[b0 + 5])
    local a, b, ok = 0, 0, false
    added[i] = false
    if alg == '3' then
      key[i] = KEYS[ki]
      local raw = redis.call('GET', key[i])
      a = tonumber(raw or '0')
      ok = L > 0 and math.max(a, now) + h * p1 - now <= p2
      if ok and h > 0 then
        -- Charge now (later items of this request see it); undone below
        -- if the request is rejected.
        local tat = math.max(a, now) + h * p1
        added[i] = {raw, redis.call('PTTL', key[i])}
        redis.call('SET', key[i], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1)
      end
      ki = ki + 1
    else
      local c, ttl = 0, p1
      if alg == '2' then
        a = tonumber(redis.call('GET', KEYS[ki]) or '0')
        key[i] = KEYS[ki + 1]
        ttl = 2 * p1 / 1000000
        ki = ki + 2
      else
        key[i] = KEYS[ki]
        ki = ki + 1
      end
      if h > 0 then
        local v = redis.call('INCRBY', key[i], h)
        -- TTL once per window key: only the hit that creates it sets it.
        if v == h then redis.call('EXPIRE', key[i], ttl) end
        added[i] = h
        c = v - h
      else
        c = tonumber(redis.call('GET', key[i]) or '0')
      end
      if alg == '2' then
        b = c
        ok = a * ((p1 - p2) / p1) + b + h <= L
      else
        a = c
        ok = a + h <= L
      end
      if not ok and h > 0 then
        redis.call('DECRBY', key[i], h)
        added[i] = false
      end
    end
    local e = ARGV[b0 + 3]
    if e == '1' then
      if not ok then rejected = 1 end
    elseif e == '2' then
      quota = true
      if ok then quotafits = true end
    end
    if alg == '3' then a = string.format('%.0f', a) end
    parts[i] = (ok and '0,' or '1,') .. a .. ',' .. b
  end
  if quota and not quotafits then rejected = 1 end
  if rejected == 1 then
    for i = n, 1, -1 do
      local undo = added[i]
      if type(undo) == 'table' then
        if not undo[1] then
          redis.call('DEL', key[i])
        elseif undo[2] > 0 then
          redis.call('SET', key[i], undo[1], 'PX', undo[2])
        end
      elseif undo then
        redis.call('DECRBY', key[i], undo)
      end
    end
  end
  ai = ai + n * 6
  out[#out + 1] = rejected .. ':' .. table.concat(parts, ',', 1, n)
end
return table.concat(out, '|')
