-- issue: append a ticket, creating the lock if needed.
-- ARGV[4]  lifetime in seconds
-- Returns {number, expires, now_serving}.
local t = now()
prune(t)
local number = redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], NUMBER_RETENTION)
local expires = t + tonumber(ARGV[4])
add_ticket(number, expires)
settle()
return {number, seconds(expires), tonumber(redis.call('ZRANGE', KEYS[1], 0, 0)[1])}
