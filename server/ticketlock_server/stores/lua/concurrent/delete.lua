-- delete: delete the lock (last_issued_ticket_number is kept).
-- Touches KEYS[1], KEYS[2], ticket keys KEYS[4] .. n; publishes on KEYS[6].
-- Returns 1 when there was a lock, else 0.
if delete_lock() then
  publish()
  return 1
end
return 0
