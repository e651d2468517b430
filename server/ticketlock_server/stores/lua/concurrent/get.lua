-- get: the lock minus expired tickets.
-- Returns the lock in Rasa's JSON form, or nil when there is no lock.
prune(now())
if redis.call('EXISTS', KEYS[2]) == 0 then
  return false
end
return lock_json(ARGV[3], tickets())
