-- save: replace the lock.
-- Touches KEYS[1..3], KEYS[5], ticket keys KEYS[4] .. n; publishes on KEYS[6].
-- ARGV[6..]  number, expires, number, expires, ... (numbers ascending, expiries epoch seconds)
-- Returns 1; fails TOOMANY (more than MAX_TICKETS tickets) changing nothing.
local saved = saved_tickets()
local last = last_issued()
delete_lock()
redis.call('ZADD', KEYS[2], '+inf', LOCK)
local highest
for _, ticket in ipairs(saved) do
  highest = ticket.number
  if ticket.expires >= T then
    add_ticket(ticket.number, ticket.expires)
  end
end
if highest then
  redis.call('SET', KEYS[3], int(math.max(last, highest)))
  keep_numbering(true)
end
settle()
publish()
return 1
