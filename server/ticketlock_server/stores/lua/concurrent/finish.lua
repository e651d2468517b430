-- finish: remove a ticket; the lock stays, even when empty.
-- ARGV[5]  ticket number
-- Returns 1 when the ticket was there, else 0.
prune(now())
if not remove_ticket(ARGV[5]) then
  return 0
end
settle()
publish()
return 1
