-- refresh: give a ticket the expiry now + lifetime.
-- ARGV[5]  ticket number, ARGV[6] lifetime in seconds
-- Returns {number, expires}, or nil when the ticket does not exist.
local t = now()
local tickets = read_lock(t)
if not tickets or foreign() then
  return false
end
local number = tonumber(ARGV[5])
for _, ticket in ipairs(tickets) do
  if ticket.number == number then
    ticket.expires = t + tonumber(ARGV[6])
    write_lock(tickets, t)
    redis.call('EXPIRE', KEYS[2], NUMBER_RETENTION)
    publish()
    return {number, epoch(ticket.expires)}
  end
end
return false
