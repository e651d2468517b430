-- waiting: whether the lock holds any unexpired ticket.
-- Touches KEYS[1], KEYS[2], expired ticket keys KEYS[4] .. n.
-- Returns 1 or 0.
prune(T)
if redis.call('ZCARD', KEYS[1]) > 0 then
  return 1
end
return 0
