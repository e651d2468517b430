-- delete: delete the lock (the next ticket number is kept).
-- Touches KEYS[1] (lock), publishes on KEYS[3].
-- Returns 1 when there was a lock, else 0.
local deleted = redis.call('DEL', KEYS[1])
if deleted == 1 then
  publish()
end
return deleted
