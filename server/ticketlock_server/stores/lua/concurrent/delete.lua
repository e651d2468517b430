-- delete: delete the lock (last_issued_ticket_number is kept).
-- Returns 1 when there was a lock, else 0.
if delete_lock() then
  publish()
  return 1
end
return 0
