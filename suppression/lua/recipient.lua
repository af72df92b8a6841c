-- A change of whether a recipient may be contacted, recorded once with its event kept until
-- the broker has it (sender/recipient_events.py). Atomic: a repeated STOP finds the record
-- already saying so and records nothing new.
-- KEYS[1] the recipient's record hash (change, id, at, source)
-- KEYS[2] the pending hash of the same scope (field event id -> event JSON), same slot
-- ARGV    change, event id, event JSON, at, source, forced ('1': the write just made
--         changed something), ARGV[7..] the previous changes that let it happen unforced
--         (none: any other previous change does)
-- returns {recorded ('1' or '0'), id1, json1, id2, json2, ...}: every pending event of the
-- scope, the new one included, for the caller to publish
local change, id, event, at, source, forced = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local current = redis.call('HGET', KEYS[1], 'change') or ''
local allowed = forced == '1' or #ARGV < 7
if not allowed then
  for i = 7, #ARGV do
    if ARGV[i] == current then allowed = true end
  end
end
local recorded = '0'
if current ~= change and allowed then
  redis.call('HSET', KEYS[1], 'change', change, 'id', id, 'at', at, 'source', source)
  redis.call('HSET', KEYS[2], id, event)
  recorded = '1'
end
local reply = {recorded}
local pending = redis.call('HGETALL', KEYS[2])
for i = 1, #pending do reply[#reply + 1] = pending[i] end
return reply
