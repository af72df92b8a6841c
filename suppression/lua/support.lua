-- A support action on an account's state, with its audit record. Atomic against the worker's
-- post-send script (same slot, same keys).
-- KEYS[1] state hash, KEYS[2] audit stream, KEYS[3..] reputation counter hashes (reset)
-- ARGV    by name (suppression/store.py: SUPPORT_ARGS; read into A by a generated prelude):
--         action (unblock | suspend | unsuspend), actor, reason, probation (seconds),
--         channels: every channel (suppression/channels.py): its level is reset
-- returns {'ok', from, to, audit id, probation_until} or {'refused', current state}
-- GENERATED arguments
local action, actor, reason = A.action, A.actor, A.reason
local probation = A.probation
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
  for _, name in ipairs(A.channels) do
    redis.call('HSET', KEYS[1], 'lvl:' .. name, 0, 'warn:' .. name, 0)
  end
  redis.call('HSET', KEYS[1], 'probation_until', until_)
end
redis.call('HSET', KEYS[1], 'state', to, 'since', now, 'reason', action)
local minid = (now - 1100 * 86400) * 1000  -- keep at least 3 years
local id = redis.call('XADD', KEYS[2], 'MINID', '~', minid, '*', 'at', now, 'actor', actor,
  'action', action, 'from', from, 'to', to, 'reason', reason,
  'detail', actor .. ': ' .. reason, 'probation_until', until_)
return {'ok', from, to, id, until_}
