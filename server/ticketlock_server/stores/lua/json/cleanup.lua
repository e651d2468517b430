-- cleanup: remove a ticket, then delete the lock if nobody else holds a ticket.
-- Touches KEYS[1] (lock), KEYS[2] (numbering, read), publishes on KEYS[3].
-- ARGV[6]  ticket number
-- Returns 1 when the lock was deleted, else 0.
local tickets = read_lock(T)
if not tickets or foreign() then
  return 0
end
local removed = remove_ticket(tickets, tonumber(ARGV[6]))
if #tickets == 0 then
  redis.call('DEL', KEYS[1])
  publish()
  return 1
end
if removed then
  write_lock(tickets, T)
  publish()
end
return 0
