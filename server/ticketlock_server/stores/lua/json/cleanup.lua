-- cleanup: remove a ticket, then delete the lock if nobody else holds a ticket.
-- ARGV[5]  ticket number
-- Returns 1 when the lock was deleted, else 0.
local t = now()
local tickets = read_lock(t)
if not tickets or foreign() then
  return 0
end
local removed = remove_ticket(tickets, tonumber(ARGV[5]))
if #tickets == 0 then
  redis.call('DEL', KEYS[1])
  publish()
  return 1
end
if removed then
  write_lock(tickets, t)
  publish()
end
return 0
