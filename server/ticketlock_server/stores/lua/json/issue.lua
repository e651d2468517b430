-- issue: append a ticket, creating the lock if needed.
-- Touches KEYS[1] (lock), KEYS[2] (numbering).
-- ARGV[6]  lifetime in seconds
-- Returns {number, expires, now_serving, epoch}; fails TOOMANY or RANGE, changing nothing.
local tickets = read_lock(T) or {}
refuse_more_tickets(#tickets)
local number = next_number()
if #tickets > 0 then
  number = math.max(number, tickets[#tickets].number + 1)
end
refuse_number(number)
local expires = T + tonumber(ARGV[6])
tickets[#tickets + 1] = {number = number, expires = expires}
write_lock(tickets, T)
keep_numbering(number + 1)
return {int(number), json_float(expires), int(tickets[1].number), redis.call('HGET', KEYS[2], 'epoch')}
