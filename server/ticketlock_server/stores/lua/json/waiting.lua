-- waiting: whether the lock holds any unexpired ticket.
-- Touches KEYS[1] (lock, read).
-- Returns 1 or 0.
local tickets = read_lock(T)
if tickets and #tickets > 0 then
  return 1
end
return 0
