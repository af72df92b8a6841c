-- A fragment, not a script: the timeline writer of pre_send.lua and post_send.lua, put in
-- where a script says `-- INCLUDE timeline_push` (suppression.gate.Script). It expects the
-- locals job, tl_ttl, ttl, value_max and timeline_keep, and KEYS[8] the timeline list.
-- entry: {at, status, reason, detail, provider, provider_message_id, attempt}
local function push(entry)
  if tl_ttl <= 0 then return end
  local head = cjson.encode({entry[1], entry[2], entry[3], entry[5], entry[7]})
  if tl_ttl == ttl and #head <= value_max and #entry[4] <= value_max
      and #entry[6] <= value_max then
    local n = redis.call('HINCRBY', job, 'tn', 1)
    local set = {'e' .. n, head}
    if entry[4] ~= '' then set[3], set[4] = 'd' .. n, entry[4] end
    if entry[6] ~= '' then set[#set + 1], set[#set + 2] = 'm' .. n, entry[6] end
    redis.call('HSET', job, unpack(set))
    local old = n - timeline_keep
    if old > 0 then redis.call('HDEL', job, 'e' .. old, 'd' .. old, 'm' .. old) end
  else
    redis.call('RPUSH', KEYS[8], cjson.encode(entry))
    redis.call('LTRIM', KEYS[8], -timeline_keep, -1)
    redis.call('EXPIRE', KEYS[8], tl_ttl)
  end
end
