-- save: replace the lock.
-- ARGV[4..]  number, expires, number, expires, ... (numbers ascending, expiries epoch seconds)
-- Returns 1.
local t = now()
local tickets = {}
local highest
for i = 4, #ARGV, 2 do
  local number, expires = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  highest = number
  if expires >= t then
    tickets[#tickets + 1] = {number = number, expires = expires}
  end
end
write_lock(tickets, t)
if highest then
  local next_number = tonumber(redis.call('GET', KEYS[2]) or '0')
  redis.call('SET', KEYS[2], int(math.max(next_number, highest + 1)), 'EX', NUMBER_RETENTION)
end
publish()
return 1
