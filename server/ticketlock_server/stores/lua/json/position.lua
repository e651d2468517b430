-- position: where a ticket stands.
-- ARGV[5]  ticket number, ARGV[6] '1' to include the lock when it holds it,
-- ARGV[7]  '1' to compute next_change_in for a waiter
-- Returns {now_serving, tickets_ahead, next_change_in or '', expires_in, lock JSON or ''},
-- or nil when the ticket does not exist.
local t = now()
local tickets = read_lock(t)
if not tickets or foreign() then
  return false
end
return position_of(tickets, tonumber(ARGV[5]), t, ARGV[6] == '1', ARGV[7] == '1')
