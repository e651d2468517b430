-- ConcurrentRedisLockStore: one key per ticket, with its own expiry, and indexes
-- that find a conversation's tickets without KEYS or SCAN.
--   KEYS[1]  queue: sorted set of the ticket numbers (score = number)
--   KEYS[2]  expiries: sorted set of the ticket numbers (score = expiry), plus the
--            member 'lock' with score +inf while the lock exists (it may be empty)
--   KEYS[3]  last_issued_ticket_number, a string counter, kept NUMBER_RETENTION
--            seconds after the last issue: a number is never handed out twice
--   KEYS[4]  the prefix of the ticket keys, `<prefix>{tag}:`, never a key itself.
--            Ticket n is the string key KEYS[4] .. n (Rasa's ticket JSON); these
--            derived keys share the hash tag, so they live in the slot of KEYS[1..5]
--   KEYS[5]  epoch of the numbering run (see ARGV[4]), kept as long as KEYS[3]
--   KEYS[6]  the change channel (published to, never stored)
-- No script touches any other key; each header says which of these it touches.

local LOCK = 'lock'

-- Drop the tickets that expired before `t`; their own keys are gone already or go now.
local function prune(t)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. seconds(t))
  if #expired == 0 then
    return
  end
  for i = 1, #expired, 1000 do
    local last = math.min(i + 999, #expired)
    redis.call('ZREM', KEYS[1], unpack(expired, i, last))
    redis.call('ZREM', KEYS[2], unpack(expired, i, last))
  end
  del_all(KEYS[4], expired)
end

-- The first `count` tickets (all when count is nil), oldest first.
local function tickets(count)
  local numbers = redis.call('ZRANGE', KEYS[1], 0, (count or 0) - 1)
  local result = {}
  if #numbers == 0 then
    return result
  end
  -- In chunks: Lua's unpack stops near 8,000 values.
  for first = 1, #numbers, 1000 do
    local last = math.min(first + 999, #numbers)
    local expiries = redis.call('ZMSCORE', KEYS[2], unpack(numbers, first, last))
    for i = first, last do
      result[i] = {number = tonumber(numbers[i]), expires = tonumber(expiries[i - first + 1])}
    end
  end
  return result
end

-- The indexes live as long as the latest ticket; an empty lock keeps its expiry.
local function settle()
  local latest = redis.call('ZREVRANGEBYSCORE', KEYS[2], '(+inf', '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #latest > 0 then
    local at = pxat(tonumber(latest[2]))
    redis.call('PEXPIREAT', KEYS[1], at)
    redis.call('PEXPIREAT', KEYS[2], at)
  elseif redis.call('PTTL', KEYS[2]) < 0 then
    redis.call('PEXPIRE', KEYS[2], EMPTY_LOCK_TTL_MS)
  end
end

-- The last number issued (0 when none is kept).
local function last_issued()
  local last = tonumber(redis.call('GET', KEYS[3]) or '0')
  if not last then
    error({err = 'BADLOCK ' .. KEYS[3] .. ' does not hold a ticket number'})
  end
  return last
end

-- Keep the numbering for another NUMBER_RETENTION; issue and save start its epoch.
local function keep_numbering(start)
  if start then
    redis.call('SET', KEYS[5], ARGV[4], 'NX')
  end
  redis.call('EXPIRE', KEYS[3], NUMBER_RETENTION)
  redis.call('EXPIRE', KEYS[5], NUMBER_RETENTION)
end

-- The caller's ticket belongs to an earlier numbering run (see ARGV[4]).
local function foreign()
  return ARGV[4] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[4]
end

local function add_ticket(number, expires)
  local member = int(number)
  redis.call('SET', KEYS[4] .. member, ticket_json(number, expires), 'PXAT', pxat(expires))
  redis.call('ZADD', KEYS[1], member, member)
  redis.call('ZADD', KEYS[2], json_float(expires), member, '+inf', LOCK)
end

local function remove_ticket(number)
  if redis.call('ZREM', KEYS[2], number) == 0 then
    return false
  end
  redis.call('ZREM', KEYS[1], number)
  redis.call('DEL', KEYS[4] .. number)
  return true
end

local function delete_lock()
  del_all(KEYS[4], redis.call('ZRANGE', KEYS[1], 0, -1))
  return redis.call('DEL', KEYS[1], KEYS[2]) > 0
end
