-- finish: remove a ticket; the lock stays, even when empty.
-- ARGV[5]  ticket number
-- Returns 1 when the ticket was there, else 0.
local t = now()
local tickets = read_lock(t)
if not tickets or not remove_ticket(tickets, tonumber(ARGV[5])) then
  return 0
end
write_lock(tickets, t)
publish()
return 1
