-- waiting: whether the lock holds any unexpired ticket.
-- Returns 1 or 0.
prune(now())
if redis.call('ZCARD', KEYS[1]) > 0 then
  return 1
end
return 0
