-- A support action on an account's state, with its audit record. Atomic against the worker's
-- post-send script (same slot, same keys).
-- KEYS[1] state hash, KEYS[2] audit stream, KEYS[3..] reputation counter hashes (reset)
-- ARGV    action (unblock | suspend | unsuspend), actor, reason, probation seconds,
--         ARGV[5..] every channel (suppression/channels.py): its level is reset
-- returns {'ok', from, to, audit id, probation_until} or {'refused', current state}
local action, actor, reason = ARGV[1], ARGV[2], ARGV[3]
local probation = tonumber(ARGV[4])
local from = redis.call('HGET', KEYS[1], 'state') or 'active'
if (action == 'unblock' and from ~= 'blocked')
    or (action == 'unsuspend' and from ~= 'suspended')
    or (action == 'suspend' and from == 'suspended') then
  return {'refused', from}
end
local t = redis.call('TIME')
local now = tonumber(t[1])
local to = action == 'suspend' and 'suspended' or 'active'
local until_ = ''
if action ~= 'suspend' then
  -- probation: the counters start afresh
  for i = 3, #KEYS do redis.call('DEL', KEYS[i]) end
  until_ = now + probation
  for i = 5, #ARGV do redis.call('HSET', KEYS[1], 'lvl:' .. ARGV[i], 0) end
  redis.call('HSET', KEYS[1], 'probation_until', until_)
end
redis.call('HSET', KEYS[1], 'state', to, 'since', now, 'reason', action)
local minid = (now - 1100 * 86400) * 1000  -- keep at least 3 years
local id = redis.call('XADD', KEYS[2], 'MINID', '~', minid, '*', 'at', now, 'actor', actor,
  'action', action, 'from', from, 'to', to, 'reason', reason,
  'detail', actor .. ': ' .. reason, 'probation_until', until_)
return {'ok', from, to, id, until_}
