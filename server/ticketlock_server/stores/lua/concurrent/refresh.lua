-- refresh: give a ticket the expiry now + lifetime.
-- ARGV[5]  ticket number, ARGV[6] lifetime in seconds
-- Returns {number, expires}, or nil when the ticket does not exist.
local t = now()
prune(t)
local number = tonumber(ARGV[5])
if foreign() or not redis.call('ZSCORE', KEYS[2], ARGV[5]) then
  return false
end
local expires = t + tonumber(ARGV[6])
add_ticket(number, expires)
settle()
keep_numbering(false)
publish()
return {number, epoch(expires)}
