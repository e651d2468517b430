-- save: replace the lock.
-- Touches KEYS[1..3], KEYS[5], ticket keys KEYS[4] .. n; publishes on KEYS[6].
-- ARGV[6..]  number, expires, number, expires, ... (numbers ascending, expiries epoch seconds)
-- Returns 1; fails TOOMANY (more than MAX_TICKETS tickets) changing nothing.
local saved = saved_tickets()
local last = last_issued()
delete_lock()
redis.call('ZADD', KEYS[2], '+inf', LOCK)
local highest
local queue, expiries = {}, {}
for _, ticket in ipairs(saved) do
  highest = ticket.number
  if ticket.expires >= T then
    local member = int(ticket.number)
    redis.call('SET', KEYS[4] .. member, ticket_json(ticket.number, ticket.expires), 'PXAT', pxat(ticket.expires))
    queue[#queue + 1] = member
    queue[#queue + 1] = member
    expiries[#expiries + 1] = json_float(ticket.expires)
    expiries[#expiries + 1] = member
  end
end
-- The indexes in a few commands, not two per ticket (in chunks, for unpack).
for i = 1, #queue, 1000 do
  local last = math.min(i + 999, #queue)
  redis.call('ZADD', KEYS[1], unpack(queue, i, last))
  redis.call('ZADD', KEYS[2], unpack(expiries, i, last))
end
if highest then
  redis.call('SET', KEYS[3], int(math.max(last, highest)))
  keep_numbering(true)
end
settle()
publish()
return 1
