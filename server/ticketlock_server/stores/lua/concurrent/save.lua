-- save: replace the lock.
-- ARGV[5..]  number, expires, number, expires, ... (numbers ascending, expiries epoch seconds)
-- Returns 1.
local t = now()
delete_lock()
redis.call('ZADD', KEYS[2], '+inf', LOCK)
local highest
for i = 5, #ARGV, 2 do
  local number, expires = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  highest = number
  if expires >= t then
    add_ticket(number, expires)
  end
end
if highest then
  local last = tonumber(redis.call('GET', KEYS[3]) or '0')
  redis.call('SET', KEYS[3], int(math.max(last, highest)))
  keep_numbering(true)
end
settle()
publish()
return 1
