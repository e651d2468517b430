-- issue: append a ticket, creating the lock if needed.
-- ARGV[5]  lifetime in seconds
-- Returns {number, expires, now_serving, epoch}.
local t = now()
prune(t)
local number = redis.call('INCR', KEYS[3])
if number == 1 then
  -- A new counter, or one Redis evicted: never below a ticket still queued.
  local newest = redis.call('ZREVRANGE', KEYS[1], 0, 0)[1]
  if newest and tonumber(newest) >= number then
    number = tonumber(newest) + 1
    redis.call('SET', KEYS[3], int(number))
  end
end
keep_numbering(true)
local expires = t + tonumber(ARGV[5])
add_ticket(number, expires)
settle()
return {number, epoch(expires), tonumber(redis.call('ZRANGE', KEYS[1], 0, 0)[1]),
  redis.call('GET', KEYS[5])}
