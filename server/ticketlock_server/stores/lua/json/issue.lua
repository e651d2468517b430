-- issue: append a ticket, creating the lock if needed.
-- ARGV[4]  lifetime in seconds
-- Returns {number, expires, now_serving}.
local t = now()
local tickets = read_lock(t) or {}
local number = tonumber(redis.call('GET', KEYS[2]) or '0')
if #tickets > 0 then
  number = math.max(number, tickets[#tickets].number + 1)
end
local expires = t + tonumber(ARGV[4])
tickets[#tickets + 1] = {number = number, expires = expires}
write_lock(tickets, t)
redis.call('SET', KEYS[2], int(number + 1), 'EX', NUMBER_RETENTION)
return {number, seconds(expires), tickets[1].number}
