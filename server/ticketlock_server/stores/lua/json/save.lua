-- save: replace the lock.
-- ARGV[5..]  number, expires, number, expires, ... (numbers ascending, expiries epoch seconds)
-- Returns 1.
local t = now()
local tickets = {}
local highest
for i = 5, #ARGV, 2 do
  local number, expires = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  highest = number
  if expires >= t then
    tickets[#tickets + 1] = {number = number, expires = expires}
  end
end
write_lock(tickets, t)
if highest then
  keep_numbering(math.max(next_number(), highest + 1))
end
publish()
return 1
