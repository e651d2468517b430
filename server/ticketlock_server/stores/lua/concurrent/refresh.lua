-- refresh: give a ticket the expiry now + lifetime.
-- Touches KEYS[1..3], KEYS[5], ticket keys KEYS[4] .. n; publishes on KEYS[6].
-- ARGV[6]  ticket number, ARGV[7] lifetime in seconds
-- Returns {number, expires}, or nil when the ticket does not exist.
prune(T)
local number = tonumber(ARGV[6])
if foreign() or not redis.call('ZSCORE', KEYS[2], ARGV[6]) then
  return false
end
local expires = T + tonumber(ARGV[7])
add_ticket(number, expires)
settle()
keep_numbering(false)
publish()
return {ARGV[6], json_float(expires)}
