-- issue: append a ticket, creating the lock if needed.
-- Touches KEYS[1..3], KEYS[5] and ticket keys KEYS[4] .. n (the new one, expired ones).
-- ARGV[6]  lifetime in seconds
-- Returns {number, expires, now_serving, epoch}; fails TOOMANY or RANGE, changing
-- nothing but the removal of expired tickets.
prune(T)
refuse_more_tickets(redis.call('ZCARD', KEYS[1]))
local last = last_issued()
local number = last + 1
if last == 0 then
  -- A new counter, or one Redis evicted: never below a ticket still queued.
  local newest = redis.call('ZREVRANGE', KEYS[1], 0, 0)[1]
  if newest then
    number = math.max(number, tonumber(newest) + 1)
  end
end
refuse_number(number)
if number == last + 1 then
  redis.call('INCR', KEYS[3])
else
  redis.call('SET', KEYS[3], int(number))
end
keep_numbering(true)
local expires = T + tonumber(ARGV[6])
add_ticket(number, expires)
settle()
return {int(number), json_float(expires), redis.call('ZRANGE', KEYS[1], 0, 0)[1],
  redis.call('GET', KEYS[5])}
