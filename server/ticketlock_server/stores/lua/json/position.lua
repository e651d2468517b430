-- position: where a ticket stands.
-- Touches KEYS[1] (lock, read), KEYS[2] (numbering, read).
-- ARGV[6]  ticket number, ARGV[7] '1' to include the lock when it holds it,
-- ARGV[8]  '1' to compute next_change_in for a waiter
-- Returns {now_serving, tickets_ahead, next_change_in or '', expires_in, lock JSON or ''},
-- or nil when the ticket does not exist.
local tickets = read_lock(T)
if not tickets or foreign() then
  return false
end
local reply = position_of(tickets, tonumber(ARGV[6]), T, ARGV[7] == '1', ARGV[8] == '1')
if reply then
  reply[1] = int(reply[1])
end
return reply
