-- refresh: give a ticket the expiry now + lifetime.
-- ARGV[4]  ticket number, ARGV[5] lifetime in seconds
-- Returns {number, expires}, or nil when the ticket does not exist.
local t = now()
prune(t)
local number = tonumber(ARGV[4])
if not redis.call('ZSCORE', KEYS[2], ARGV[4]) then
  return false
end
local expires = t + tonumber(ARGV[5])
add_ticket(number, expires)
settle()
publish()
return {number, epoch(expires)}
