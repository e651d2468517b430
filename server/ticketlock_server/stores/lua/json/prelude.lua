-- RedisLockStore: one value per conversation in Rasa's JSON form.
--   KEYS[1]  the lock, `lock:<conversation_id>`, exactly where Rasa keeps it: a string
--            (Rasa's JSON)
--   KEYS[2]  numbering: a hash of `next` (the next ticket number) and `epoch`, kept
--            NUMBER_RETENTION seconds after the last issue, so that a number is never
--            handed out twice while a stale client may still use it
--   KEYS[3]  the change channel (published to, never stored)
-- No script touches any other key.

-- The lock's unexpired tickets, oldest first, or nil when there is no lock.
local function read_lock(t)
  local raw = redis.call('GET', KEYS[1])
  if not raw then
    return nil
  end
  local ok, doc = pcall(cjson.decode, raw)
  if not ok or type(doc) ~= 'table' then
    error({err = 'BADLOCK ' .. KEYS[1] .. ' does not hold a ticket lock'})
  end
  local tickets = {}
  if type(doc.tickets) == 'table' then
    for _, entry in ipairs(doc.tickets) do
      local ticket = entry
      if type(entry) == 'string' then
        ok, ticket = pcall(cjson.decode, entry)
      end
      if not ok or type(ticket) ~= 'table' or type(ticket.number) ~= 'number'
          or type(ticket.expires) ~= 'number' or ticket.number < 0 or ticket.number % 1 ~= 0 then
        error({err = 'BADLOCK ' .. KEYS[1] .. ' holds a ticket that is not {number, expires}'})
      end
      if ticket.expires >= t then
        tickets[#tickets + 1] = {number = ticket.number, expires = ticket.expires}
      end
    end
  end
  return tickets
end

-- Write the lock; it expires with its last ticket, as an abandoned lock should.
local function write_lock(tickets, t)
  local value = lock_json(ARGV[3], tickets)
  local latest
  for _, ticket in ipairs(tickets) do
    if not latest or ticket.expires > latest then
      latest = ticket.expires
    end
  end
  if latest then
    redis.call('SET', KEYS[1], value, 'PXAT', pxat(latest))
  elseif redis.call('PTTL', KEYS[1]) > 0 then
    redis.call('SET', KEYS[1], value, 'KEEPTTL')
  else
    redis.call('SET', KEYS[1], value, 'PX', EMPTY_LOCK_TTL_MS)
  end
end

local function next_number()
  local raw = redis.call('HGET', KEYS[2], 'next')
  local number = tonumber(raw or '0')
  if not number then
    error({err = 'BADLOCK ' .. KEYS[2] .. ' does not hold a ticket number'})
  end
  return number
end

-- Keep the numbering for another NUMBER_RETENTION; issue and save start its epoch.
local function keep_numbering(next)
  redis.call('HSET', KEYS[2], 'next', int(next))
  redis.call('HSETNX', KEYS[2], 'epoch', ARGV[4])
  redis.call('EXPIRE', KEYS[2], NUMBER_RETENTION)
end

-- The caller's ticket belongs to an earlier numbering run (see ARGV[4]).
local function foreign()
  return ARGV[4] ~= '' and redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[4]
end

local function remove_ticket(tickets, number)
  for i, ticket in ipairs(tickets) do
    if ticket.number == number then
      table.remove(tickets, i)
      return true
    end
  end
  return false
end
