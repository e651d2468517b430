-- position: where a ticket stands.
-- ARGV[5]  ticket number, ARGV[6] '1' to include the lock when it holds it,
-- ARGV[7]  '1' to compute next_change_in for a waiter
-- Returns {now_serving, tickets_ahead, next_change_in or '', expires_in, lock JSON or ''},
-- or nil when the ticket does not exist.
local t = now()
prune(t)
if foreign() then
  return false
end
local number = tonumber(ARGV[5])
local ahead = redis.call('ZRANK', KEYS[1], ARGV[5])
if not ahead then
  return false
end
if ahead == 0 then
  if ARGV[6] == '1' then
    return position_of(tickets(), number, t, true, false)
  end
  local expires = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[5]))
  return {number, 0, '', seconds(math.max(0, expires - t)), ''}
end
if ARGV[7] == '1' then
  return position_of(tickets(ahead + 1), number, t, false, true)
end
local expires = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[5]))
local head = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
return {tonumber(head), ahead, '', seconds(math.max(0, expires - t)), ''}
