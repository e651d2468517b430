-- issue: append a ticket, creating the lock if needed.
-- ARGV[5]  lifetime in seconds
-- Returns {number, expires, now_serving, epoch}.
local t = now()
local tickets = read_lock(t) or {}
local number = next_number()
if #tickets > 0 then
  number = math.max(number, tickets[#tickets].number + 1)
end
local expires = t + tonumber(ARGV[5])
tickets[#tickets + 1] = {number = number, expires = expires}
write_lock(tickets, t)
keep_numbering(number + 1)
return {number, epoch(expires), tickets[1].number, redis.call('HGET', KEYS[2], 'epoch')}
