-- cleanup: remove a ticket, then delete the lock if nobody else holds a ticket.
-- Touches KEYS[1], KEYS[2], KEYS[5] (read), ticket keys KEYS[4] .. n; publishes on KEYS[6].
-- ARGV[6]  ticket number
-- Returns 1 when the lock was deleted, else 0.
prune(T)
if foreign() then
  return 0
end
local removed = remove_ticket(ARGV[6])
if redis.call('ZCARD', KEYS[1]) == 0 then
  local deleted = redis.call('DEL', KEYS[2]) > 0
  if deleted or removed then
    publish()
  end
  if deleted then
    return 1
  end
  return 0
end
if removed then
  settle()
  publish()
end
return 0
