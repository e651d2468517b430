-- get: the lock minus expired tickets.
-- Touches KEYS[1], KEYS[2], expired ticket keys KEYS[4] .. n.
-- Returns the lock in Rasa's JSON form, or nil when there is no lock.
prune(T)
if redis.call('EXISTS', KEYS[2]) == 0 then
  return false
end
return lock_json(ARGV[3], tickets())
