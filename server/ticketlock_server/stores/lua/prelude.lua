-- Shared by every script (prepended when the store loads them, after the limits
-- that the store writes as constants: NUMBER_RETENTION, MAX_TICKETS).
--
-- Conventions of all scripts:
--   KEYS  the conversation's keys (one hash slot); the last one is its change channel.
--   ARGV[1]  '1' in cluster mode: wake-ups go out with SPUBLISH to the conversation's
--            slot; otherwise with PUBLISH
--   ARGV[2]  the calling server's id, sent as the message so it can skip its own
--   ARGV[3]  the conversation id (for the JSON form)
--   ARGV[4]  an epoch: the id of the conversation's numbering run, which begins when
--            its number counter is created and ends when the counter is lost
--            (NUMBER_RETENTION after the last issue, or when Redis loses its data).
--            issue and save start a run with it when there is none (issue returns
--            the current one); position, cleanup and refresh take '' or the epoch of
--            the caller's ticket, and treat the ticket as not there when the run has
--            changed: after Redis lost its data, its number may be someone else's.
--   ARGV[5]  the deadline, in seconds of the Redis clock: the calling server gives up
--            on the call then, so a script that only starts later (Redis was paused,
--            the command sat in a socket buffer) must change nothing: it fails LATE
--   ARGV[6..] what the operation needs
-- Times are float seconds from the Redis server's TIME: one clock for every replica.
--
-- Errors, each a first word the store maps (nothing is written before any of them):
--   LATE      past the deadline
--   BADLOCK   the conversation's keys hold data that is not a ticket lock
--   RANGE     the next number would leave the range a Lua number holds exactly
--   TOOMANY   the conversation holds MAX_TICKETS tickets already
--   BADSAVE   a saved ticket is out of range (the server checks first: a bug if seen)

-- Numbers are Lua doubles: exact for every integer up to 2^53. Tickets are numbered
-- up to 2^53 - 1 and no further, so that `number + 1` is always exact.
local MAX_NUMBER = 9007199254740991   -- 2^53 - 1
local MAX_EXPIRES = 253402300799      -- 9999-12-31T23:59:59Z
-- How long a lock without tickets lives when it had no expiry to keep.
local EMPTY_LOCK_TTL_MS = 60000

local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- The time every script works with, read once; and the deadline checked before
-- any write.
local T = now()
if ARGV[5] ~= '' and T > tonumber(ARGV[5]) then
  error({err = 'LATE the calling server gave up on this call ' .. string.format('%.3f', T - tonumber(ARGV[5])) .. ' s ago'})
end

local function publish()
  if ARGV[1] == '1' then
    redis.call('SPUBLISH', KEYS[#KEYS], ARGV[2])
  else
    redis.call('PUBLISH', KEYS[#KEYS], ARGV[2])
  end
end

local function seconds(value)
  return string.format('%.6f', value)
end

-- A float exactly as the double it is (a saved lock reads back unchanged), written
-- as Python writes a float in JSON: 1700000000.0, never 1700000000.
local function json_float(value)
  local text = string.format('%.17g', value)
  if not string.find(text, '[.eEn]') then
    text = text .. '.0'
  end
  return text
end

-- Numbers as text (Redis arguments, JSON): Lua would write a large one as 1.2e+15.
local function int(number)
  return string.format('%d', number)
end

local function ticket_json(number, expires)
  return '{"number": ' .. int(number) .. ', "expires": ' .. json_float(expires) .. '}'
end

-- Milliseconds for PXAT, rounded up: a key never vanishes before its ticket expires.
local function pxat(expires)
  return string.format('%d', math.ceil(expires * 1000))
end

local function refuse_more_tickets(count)
  if count >= MAX_TICKETS then
    error({err = 'TOOMANY the conversation holds ' .. int(count) .. ' tickets, the most max_tickets_per_conversation (' .. int(MAX_TICKETS) .. ') allows'})
  end
end

local function refuse_number(number)
  if number > MAX_NUMBER then
    error({err = 'RANGE the next ticket number would be ' .. int(number) .. ', above 2^53 - 1 (' .. int(MAX_NUMBER) .. '), the largest the store keeps exactly'})
  end
end

-- DEL the keys `prefix .. name` for every name, in chunks: Lua's unpack stops near
-- 8,000 values.
local function del_all(prefix, names)
  for i = 1, #names, 1000 do
    local chunk = {}
    for j = i, math.min(i + 999, #names) do
      chunk[#chunk + 1] = prefix .. names[j]
    end
    redis.call('DEL', unpack(chunk))
  end
end

-- The tickets a save script gets in ARGV[6..] (number, expires, ...), checked before
-- anything is written, since Redis does not undo a script's writes on an error.
local function saved_tickets()
  local tickets = {}
  for i = 6, #ARGV, 2 do
    local number, expires = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    if not number or number < 0 or number >= MAX_NUMBER or number % 1 ~= 0
        or not expires or expires ~= expires or math.abs(expires) > MAX_EXPIRES then
      error({err = 'BADSAVE ticket ' .. tostring(ARGV[i]) .. ' expiring ' .. tostring(ARGV[i + 1])})
    end
    tickets[#tickets + 1] = {number = number, expires = expires}
  end
  if #tickets > MAX_TICKETS then
    error({err = 'TOOMANY the lock has ' .. int(#tickets) .. ' tickets, more than max_tickets_per_conversation (' .. int(MAX_TICKETS) .. ') allows'})
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
