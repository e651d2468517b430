-- position: where a ticket stands.
-- ARGV[4]  ticket number, ARGV[5] '1' to include the lock when it holds it,
-- ARGV[6]  '1' to compute next_change_in for a waiter
-- Returns {now_serving, tickets_ahead, next_change_in or '', expires_in, lock JSON or ''},
-- or nil when the ticket does not exist.
local t = now()
local tickets = read_lock(t)
if not tickets then
  return false
end
return position_of(tickets, tonumber(ARGV[4]), t, ARGV[5] == '1', ARGV[6] == '1')
