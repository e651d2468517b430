-- refresh: give a ticket the expiry now + lifetime.
-- Touches KEYS[1] (lock), KEYS[2] (numbering), publishes on KEYS[3].
-- ARGV[6]  ticket number, ARGV[7] lifetime in seconds
-- Returns {number, expires}, or nil when the ticket does not exist.
local tickets = read_lock(T)
if not tickets or foreign() then
  return false
end
local number = tonumber(ARGV[6])
for _, ticket in ipairs(tickets) do
  if ticket.number == number then
    ticket.expires = T + tonumber(ARGV[7])
    write_lock(tickets, T)
    redis.call('EXPIRE', KEYS[2], NUMBER_RETENTION)
    publish()
    return {int(number), json_float(ticket.expires)}
  end
end
return false
