-- refresh: give a ticket the expiry now + lifetime.
-- ARGV[4]  ticket number, ARGV[5] lifetime in seconds
-- Returns {number, expires}, or nil when the ticket does not exist.
local t = now()
local tickets = read_lock(t)
if not tickets then
  return false
end
local number = tonumber(ARGV[4])
for _, ticket in ipairs(tickets) do
  if ticket.number == number then
    ticket.expires = t + tonumber(ARGV[5])
    write_lock(tickets, t)
    publish()
    return {number, epoch(ticket.expires)}
  end
end
return false
