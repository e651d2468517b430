-- position: where a ticket stands.
-- Touches KEYS[1], KEYS[2], KEYS[5] (read), expired ticket keys KEYS[4] .. n.
-- ARGV[6]  ticket number, ARGV[7] '1' to include the lock when it holds it,
-- ARGV[8]  '1' to compute next_change_in for a waiter
-- Returns {now_serving, tickets_ahead, next_change_in or '', expires_in, lock JSON or ''},
-- or nil when the ticket does not exist.
prune(T)
if foreign() then
  return false
end
local number = tonumber(ARGV[6])
local ahead = redis.call('ZRANK', KEYS[1], ARGV[6])
if not ahead then
  return false
end
if ahead == 0 then
  if ARGV[7] == '1' then
    local reply = position_of(tickets(), number, T, true, false)
    reply[1] = ARGV[6]
    return reply
  end
  local expires = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[6]))
  return {ARGV[6], 0, '', seconds(math.max(0, expires - T)), ''}
end
if ARGV[8] == '1' then
  local reply = position_of(tickets(ahead + 1), number, T, false, true)
  reply[1] = int(reply[1])
  return reply
end
local expires = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[6]))
local head = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
return {head, ahead, '', seconds(math.max(0, expires - T)), ''}
