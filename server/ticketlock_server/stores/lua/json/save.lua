-- save: replace the lock.
-- Touches KEYS[1] (lock), KEYS[2] (numbering), publishes on KEYS[3].
-- ARGV[6..]  number, expires, number, expires, ... (numbers ascending, expiries epoch seconds)
-- Returns 1; fails TOOMANY (more than MAX_TICKETS tickets) changing nothing.
local tickets = {}
local highest
for _, ticket in ipairs(saved_tickets()) do
  highest = ticket.number
  if ticket.expires >= T then
    tickets[#tickets + 1] = ticket
  end
end
local next = highest and math.max(next_number(), highest + 1)
write_lock(tickets, T)
if next then
  keep_numbering(next)
end
publish()
return 1
