-- A change of whether a recipient may be contacted, recorded once with its event kept until
-- the broker has it (sender/recipient_events.py). Atomic: a repeated STOP finds the record
-- already saying so and records nothing new.
-- KEYS[1] the recipient's record hash (change, id, at, source)
-- KEYS[2] the pending hash of the same scope, same slot: field e:<id> the event's JSON,
--         c:<id> when a caller claimed it for publishing (ms, Redis TIME)
-- ARGV    by name (sender/recipient_events.py: RECIPIENT_ARGS; read into A by a generated
--         prelude): change ('' to record nothing: the sweeper's call, KEYS[1] then the pending
--         hash too), id (the event's), event (its JSON), at, source, forced (the write just
--         made changed something), stale (ms: a claim older than this is a publisher that
--         died), unforced_by: the previous changes that let it happen unforced (none: any
--         other does)
-- returns {recorded ('1' or '0'), id1, json1, id2, json2, ...}: the pending events of the
-- scope nobody else is publishing (the new one included), now claimed by the caller
-- GENERATED arguments
local change, id, event, at, source = A.change, A.id, A.event, A.at, A.source
local stale = A.stale
local current = redis.call('HGET', KEYS[1], 'change') or ''
local allowed = A.forced or #A.unforced_by == 0
if not allowed then
  for _, previous in ipairs(A.unforced_by) do
    if previous == current then allowed = true end
  end
end
local recorded = '0'
if change ~= '' and current ~= change and allowed then
  redis.call('HSET', KEYS[1], 'change', change, 'id', id, 'at', at, 'source', source)
  redis.call('HSET', KEYS[2], 'e:' .. id, event)
  recorded = '1'
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local reply = {recorded}
local pending = redis.call('HGETALL', KEYS[2])
for i = 1, #pending, 2 do
  local field = pending[i]
  if string.sub(field, 1, 2) == 'e:' then
    local eid = string.sub(field, 3)
    local claimed = tonumber(redis.call('HGET', KEYS[2], 'c:' .. eid) or '0')
    if now - claimed > stale then
      redis.call('HSET', KEYS[2], 'c:' .. eid, now)
      reply[#reply + 1] = eid
      reply[#reply + 1] = pending[i + 1]
    end
  end
end
return reply
