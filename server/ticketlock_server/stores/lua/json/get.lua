-- get: the lock minus expired tickets.
-- Touches KEYS[1] (lock, read).
-- Returns the lock in Rasa's JSON form, or nil when there is no lock.
local tickets = read_lock(T)
if not tickets then
  return false
end
return lock_json(ARGV[3], tickets)
