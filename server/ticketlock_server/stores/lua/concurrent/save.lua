-- save: replace the lock.
-- ARGV[5..]  number, expires, number, expires, ... (numbers ascending, expiries epoch seconds)
-- Returns 1.
local t = now()
local saved = saved_tickets()
delete_lock()
redis.call('ZADD', KEYS[2], '+inf', LOCK)
local highest
for _, ticket in ipairs(saved) do
  highest = ticket.number
  if ticket.expires >= t then
    add_ticket(ticket.number, ticket.expires)
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
