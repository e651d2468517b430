-- finish: remove a ticket; the lock stays, even when empty.
-- Touches KEYS[1] (lock), publishes on KEYS[3].
-- ARGV[6]  ticket number
-- Returns 1 when the ticket was there, else 0.
local tickets = read_lock(T)
if not tickets or not remove_ticket(tickets, tonumber(ARGV[6])) then
  return 0
end
write_lock(tickets, T)
publish()
return 1
