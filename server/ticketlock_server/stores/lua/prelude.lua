-- Shared by every script (prepended when the store loads them).
--
-- Conventions of all scripts:
--   KEYS  the conversation's keys (one hash slot); the last one is its change channel.
--   ARGV[1]  'PUBLISH', 'SPUBLISH' (cluster) or '' (no wake-ups)
--   ARGV[2]  the calling server's id, sent as the message so it can skip its own
--   ARGV[3]  the conversation id (for the JSON form)
--   ARGV[4]  an epoch: the id of the conversation's numbering run, which begins when
--            its number counter is created and ends when the counter is lost (24 h
--            after the last issue, or when Redis loses its data). issue and save
--            start a run with it when there is none (issue returns the current one);
--            position, cleanup and refresh take '' or the epoch of the caller's
--            ticket, and treat the ticket as not there when the run has changed:
--            after Redis lost its data, its number may be someone else's.
--   ARGV[5..] what the operation needs
-- Times are float seconds from the Redis server's TIME: one clock for every replica.

-- Ticket numbers are kept 24 h after the last issue (never handed out twice).
local NUMBER_RETENTION = 86400
-- How long a lock without tickets lives when it had no expiry to keep.
local EMPTY_LOCK_TTL_MS = 60000

local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function publish()
  if ARGV[1] ~= '' then
    redis.call(ARGV[1], KEYS[#KEYS], ARGV[2])
  end
end

local function seconds(value)
  return string.format('%.6f', value)
end

-- An epoch time exactly as the double it is (a saved lock reads back unchanged),
-- and a float in JSON as Python writes it: 1700000000.0, never 1700000000.
local function epoch(value)
  local text = string.format('%.17g', value)
  if not string.find(text, '[.eEn]') then
    text = text .. '.0'
  end
  return text
end

local function ticket_json(number, expires)
  return '{"number": ' .. string.format('%d', number) .. ', "expires": ' .. epoch(expires) .. '}'
end

-- Milliseconds for PXAT, rounded up: a key never vanishes before its ticket expires.
local function pxat(expires)
  return string.format('%d', math.ceil(expires * 1000))
end

-- Numbers as Redis arguments: Lua would write a large one as 1.2e+15.
local function int(number)
  return string.format('%d', number)
end

-- The tickets a save script gets in ARGV[5..] (number, expires, ...), checked before
-- anything is written, since Redis does not undo a script's writes on an error.
local MAX_NUMBER = 9007199254740991   -- 2^53 - 1: a double holds every integer to here
local MAX_EXPIRES = 253402300799      -- 9999-12-31T23:59:59Z
local function saved_tickets()
  local tickets = {}
  for i = 5, #ARGV, 2 do
    local number, expires = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    if not number or number < 0 or number > MAX_NUMBER or number % 1 ~= 0
        or not expires or expires ~= expires or math.abs(expires) > MAX_EXPIRES then
      error({err = 'BADSAVE ticket ' .. tostring(ARGV[i]) .. ' expiring ' .. tostring(ARGV[i + 1])})
    end
    tickets[#tickets + 1] = {number = number, expires = expires}
  end
  return tickets
end

-- Rasa's JSON form: each ticket is itself a JSON string inside the list.
local function lock_json(conversation_id, tickets)
  local parts = {}
  for i, ticket in ipairs(tickets) do
    parts[i] = cjson.encode(ticket_json(ticket.number, ticket.expires))
  end
  return '{"conversation_id": ' .. cjson.encode(conversation_id) .. ', "tickets": [' .. table.concat(parts, ', ') .. ']}'
end

-- Where ticket `number` stands among `tickets` (oldest first), as the position
-- script returns it: {now_serving, tickets_ahead, next_change_in or '', expires_in,
-- lock JSON or ''}; false when the ticket is not there.
local function position_of(tickets, number, t, with_lock, next_change)
  local index
  for i, ticket in ipairs(tickets) do
    if ticket.number == number then
      index = i
      break
    end
  end
  if not index then
    return false
  end
  local expires_in = seconds(math.max(0, tickets[index].expires - t))
  if index == 1 then
    local lock = ''
    if with_lock then
      lock = lock_json(ARGV[3], tickets)
    end
    return {number, 0, '', expires_in, lock}
  end
  local change = ''
  if next_change then
    local soonest = tickets[1].expires
    for i = 2, index do
      soonest = math.min(soonest, tickets[i].expires)
    end
    change = seconds(math.max(0, soonest - t))
  end
  return {tickets[1].number, index - 1, change, expires_in, ''}
end
