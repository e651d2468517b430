-- finish: remove a ticket; the lock stays, even when empty.
-- Touches KEYS[1], KEYS[2], ticket keys KEYS[4] .. n; publishes on KEYS[6].
-- ARGV[6]  ticket number
-- Returns 1 when the ticket was there, else 0.
prune(T)
if not remove_ticket(ARGV[6]) then
  return 0
end
settle()
publish()
return 1
