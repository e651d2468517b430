-- waiting: whether the lock holds any unexpired ticket.
-- Returns 1 or 0.
local tickets = read_lock(now())
if tickets and #tickets > 0 then
  return 1
end
return 0
