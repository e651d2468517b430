-- save: replace the lock.
-- ARGV[5..]  number, expires, number, expires, ... (numbers ascending, expiries epoch seconds)
-- Returns 1.
local t = now()
local tickets = {}
local highest
for _, ticket in ipairs(saved_tickets()) do
  highest = ticket.number
  if ticket.expires >= t then
    tickets[#tickets + 1] = ticket
  end
end
write_lock(tickets, t)
if highest then
  keep_numbering(math.max(next_number(), highest + 1))
end
publish()
return 1
