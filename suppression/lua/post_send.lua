-- Post-send record for one job, and the account's reputation. One round trip (the caller
-- pipelines the global suppression write of a hard bounce beside it).
-- KEYS[1]  job hash                outbox:{acct:A}:job:ID
-- KEYS[2]  account state hash      outbox:{acct:A}:state
-- KEYS[3]  account settings hash   outbox:{acct:A}:cfg
-- KEYS[4]  reputation counters     outbox:{acct:A}:rep:<channel>
-- KEYS[5]  audit stream            outbox:{acct:A}:audit
-- KEYS[6]  recent bounces list     outbox:{acct:A}:recent
-- KEYS[7]  token bucket            outbox:{acct:A}:tb:<channel>
-- KEYS[8]  job timeline            outbox:{acct:A}:tl:ID (an entry for every status written,
--          'R' as 'deferred'; a late one that does not move the status is entered too)
-- KEYS[9]  (provider events only) the event's marker key: an event already applied changes
--          nothing a second time
-- ARGV     by name, as suppression/gate.py declares them (POST_SEND_ARGS; the prelude that reads
--          them into A is generated from that declaration, suppression/script_args.py):
--   status ('R' = retry scheduled, else a final status), attempt, provider,
--   provider_message_id, ttl (seconds), reason, channel, job_id, sends, hard, complaints (what
--   to add to the counters), refund (give the rate token back: the job was claimed but not
--   sent), event_ttl (how long a provider event's marker is kept; '' otherwise), detail (the
--   timeline entry's), timeline_keep (entries kept in a timeline), timeline_ttl (seconds the
--   timeline list is kept, 0: not written), value_max (the longest value a hash keeps in its
--   compact encoding, hash-max-listpack-value),
--   channels: every channel (suppression/channels.py): the account's state is the worst level
--     over all of them (state hash fields lvl:<channel>, and warn:<channel> for the warning
--     lines),
--   and the reputation parameters declared for this script (config/reputation.py), read by
--   policy(KEYS[3]) into P: the account's override where it may have one, else the default.
-- The job's newest timeline entry that moved its status lives in the job hash itself (its
-- st, a, p, pm, r plus 'et' time in ms, 'ed' detail and, for a provider's report, 'ea' the
-- attempt it concerns: no key of its own for the usual one-entry story). An entry it
-- replaces, a late one, or one whose detail would not fit the hash's compact encoding is
-- stored packed (push): in the job hash too when every part fits the compact encoding and
-- the timeline is kept as long as the job (fields 'e<n>' [at ms, status, reason, provider,
-- attempt], 'd<n>' detail, 'm<n>' provider message id, 'tn' the last n), else in the
-- timeline list (KEYS[8]) as [at ms, status, reason, detail, provider, provider_message_id,
-- attempt].
-- A job's status written again at the same attempt (its caller retried after losing the
-- reply: a hung Redis, a batch's timeout) changes nothing and counts nothing a second time.
-- returns  {moved, from, to, audit id, why, detail, sends, hard, complaints, applied, and for
--          a provider event the rest of the job's metadata}:
--          moved 1 when the account's state moved; applied 1 when the job took the status,
--          0 when it already had a later one (a status never moves backwards), -1 for an
--          event seen before
-- GENERATED arguments
-- GENERATED rank
local job = KEYS[1]
local applied = 1
-- a provider event's answer also carries the rest of the job's kept metadata (the pieces
-- 'md1', 'md2'... after 'md', which the caller reads beside the script)
local function metadata_rest()
  local parts = {}
  while true do
    local piece = redis.call('HGET', job, 'md' .. (#parts + 1))
    if not piece then return table.concat(parts) end
    parts[#parts + 1] = piece
  end
end
local function answer(moved, ...)
  local out = {0, '', '', '', '', '', 0, 0, 0}
  if moved ~= 0 then out = {moved, ...} end
  out[10] = applied
  if KEYS[9] then out[11] = metadata_rest() end
  return out
end

if KEYS[9] and A.event_ttl ~= '' then
  if not redis.call('SET', KEYS[9], '1', 'NX', 'EX', tonumber(A.event_ttl)) then
    applied = -1
    return answer(0)
  end
end

-- A status is written only if it is at least as far along (RANK) as the one held.
local status, attempt = A.status, A.attempt
if status ~= '' then
  local held_job = redis.call('HMGET', job, 'st', 'a', 'et')
  local held = held_job[1]
  if not KEYS[9] and held == status and held_job[2] == attempt and status ~= 'S' then
    -- this very call again (its reply was lost, the caller retried): counted once
    return answer(0)
  end
  local att = tonumber(attempt) or 0
  if att == 0 then att = tonumber(held_job[2]) or 0 end  -- a provider report: the last attempt
  local tt = redis.call('TIME')
  local at = tonumber(tt[1]) * 1000 + math.floor(tonumber(tt[2]) / 1000)
  local tl_ttl, ttl, value_max = A.timeline_ttl, A.ttl, A.value_max
  local timeline_keep = A.timeline_keep
  -- INCLUDE timeline_push
  -- the entry the job hash holds (if any) joins the earlier ones before the hash changes
  local function push_held()
    if held_job[3] then
      local h = redis.call('HMGET', job, 'st', 'r', 'ed', 'p', 'pm', 'a', 'ea')
      push({tonumber(held_job[3]),
        h[1] == 'R' and 'deferred' or h[1] == 'W' and 'scheduled' or h[1], h[2] or '',
        h[3] or '', h[4] or '', h[5] or '', tonumber(h[7] or h[6]) or 0})
      redis.call('HDEL', job, 'et', 'ed', 'ea')
    end
  end
  local entry = {at, status == 'R' and 'deferred' or status, A.reason, A.detail, A.provider,
    A.provider_message_id, att}
  if held and (RANK[status] or 0) < (RANK[held] or 0) then
    applied = 0
    push(entry)
    redis.call('HDEL', job, 'o')
    if A.provider_message_id ~= '' then
      push_held()
      redis.call('HSET', job, 'pm', A.provider_message_id)
    end
  else
    push_held()
    -- an empty provider, message id or reason is not stored (a missing field reads as '')
    local set, gone = {'st', status, 'a', attempt}, {'o'}
    for _, f in ipairs({{'p', A.provider}, {'pm', A.provider_message_id}, {'r', A.reason}}) do
      if f[2] == '' then
        gone[#gone + 1] = f[1]
      else
        set[#set + 1] = f[1]
        set[#set + 1] = f[2]
      end
    end
    redis.call('HSET', job, unpack(set))
    redis.call('HDEL', job, unpack(gone))
    if #A.detail <= value_max then
      redis.call('HSET', job, 'et', at, 'ed', A.detail)
      -- a provider's report writes attempt 0 ('a'); its entry keeps the job's last ('ea')
      if tonumber(attempt) ~= att then redis.call('HSET', job, 'ea', att) end
    else
      push(entry)
    end
  end
  redis.call('EXPIRE', job, A.ttl)
end
if A.refund and redis.call('EXISTS', KEYS[7]) == 1 then
  redis.call('HINCRBYFLOAT', KEYS[7], 't', 1)
end
local channel, job_id = A.channel, A.job_id
local inc_s, inc_h, inc_c = A.sends, A.hard, A.complaints
if inc_s + inc_h + inc_c == 0 then
  return answer(0)
end

local t = redis.call('TIME')
local now = tonumber(t[1])
local now_ms = now * 1000 + math.floor(tonumber(t[2]) / 1000)
local P = policy(KEYS[3])
local bucket, window = P.reputation_bucket, P.reputation_window
local z = P.z

-- Count into the current bucket and into the running totals (S, H, C) of the buckets held.
-- When the oldest bucket held ('lo') has left the window, or the totals are missing, the
-- buckets are scanned once: expired ones dropped, totals recomputed. So a send is O(1), and
-- the scan runs about once per bucket period.
local rep = KEYS[4]
local start = now - now % bucket
if inc_s > 0 then redis.call('HINCRBY', rep, 's:' .. start, inc_s) end
if inc_h > 0 then redis.call('HINCRBY', rep, 'h:' .. start, inc_h) end
if inc_c > 0 then redis.call('HINCRBY', rep, 'c:' .. start, inc_c) end
redis.call('EXPIRE', rep, window + bucket)
local held = redis.call('HMGET', rep, 'lo', 'S', 'H', 'C')
local lo = tonumber(held[1])
local sums
if lo == nil or held[2] == false or lo + bucket <= now - window then
  sums = {s = 0, h = 0, c = 0}
  lo = start
  local fields = redis.call('HGETALL', rep)
  for i = 1, #fields, 2 do
    local f = fields[i]
    local kind, from = string.sub(f, 1, 1), tonumber(string.sub(f, 3))
    if from and sums[kind] then
      if from + bucket <= now - window then
        redis.call('HDEL', rep, f)
      else
        sums[kind] = sums[kind] + tonumber(fields[i + 1])
        lo = math.min(lo, from)
      end
    end
  end
  redis.call('HSET', rep, 'lo', lo, 'S', sums.s, 'H', sums.h, 'C', sums.c)
else
  sums = {s = tonumber(held[2]) + inc_s, h = tonumber(held[3]) + inc_h,
          c = tonumber(held[4]) + inc_c}
  redis.call('HSET', rep, 'S', sums.s, 'H', sums.h, 'C', sums.c)
end
if inc_h > 0 or inc_c > 0 then
  redis.call('LPUSH', KEYS[6], cjson.encode({at = now, channel = channel, job = job_id,
    kind = inc_c > 0 and 'complaint' or 'hard', reason = A.reason}))
  redis.call('LTRIM', KEYS[6], 0, 49)
end

-- BEGIN wilson (suppression/reputation.py mirrors this; a property test checks they agree)
local function wilson(k, n, zz)
  if n <= 0 then return 0.0 end
  local ph = math.min(1, k / n)  -- complaints can outlive their sends in the window
  local z2 = zz * zz
  local centre = ph + z2 / (2 * n)
  local margin = zz * math.sqrt(ph * (1 - ph) / n + z2 / (4 * n * n))
  return math.max(0.0, (centre - margin) / (1 + z2 / n))
end

-- 0 fine, 1 throttle, 2 block
local function level(k, n, min_n, early_n, throttle, block)
  local lb = wilson(k, n, z)
  if n >= math.min(min_n, early_n) and lb >= block then return 2, lb end
  if n >= min_n and lb >= throttle then return 1, lb end
  return 0, lb
end
-- END wilson

local lb_level, lb_b = level(sums.h, sums.s, P.min_bounce_volume, P.early_bounce_volume,
  P.throttle_bounce, P.block_bounce)
local lc_level, lb_c = level(sums.c, sums.s, P.min_complaint_volume, P.early_complaint_volume,
  P.throttle_complaint, P.block_complaint)
local lvl = math.max(lb_level, lc_level)
local why = lb_level >= lc_level and 'hard_bounce_rate' or 'complaint_rate'
-- the warning lines: from the early volume on, nothing slowed (state 'warning')
local wb = sums.s >= math.min(P.min_bounce_volume, P.early_bounce_volume)
  and lb_b >= P.warning_bounce
local wc = sums.s >= math.min(P.min_complaint_volume, P.early_complaint_volume)
  and lb_c >= P.warning_complaint
local warn = (wb or wc) and 1 or 0
if lvl == 0 and warn == 1 then why = wb and 'hard_bounce_rate' or 'complaint_rate' end

-- the levels held: this channel's, and the worst of the others
local fields = {'state'}
for _, name in ipairs(A.channels) do
  fields[#fields + 1] = 'lvl:' .. name
  fields[#fields + 1] = 'warn:' .. name
end
local st = redis.call('HMGET', KEYS[2], unpack(fields))
local from = st[1] or 'active'
local held_lvl, held_warn, others, others_warn = 0, 0, 0, 0
for i, name in ipairs(A.channels) do
  local v, w = tonumber(st[2 * i]) or 0, tonumber(st[2 * i + 1]) or 0
  if name == channel then
    held_lvl, held_warn = v, w
  else
    others, others_warn = math.max(others, v), math.max(others_warn, w)
  end
end
if held_lvl ~= lvl then
  redis.call('HSET', KEYS[2], 'lvl:' .. channel, lvl)
end
if held_warn ~= warn then
  redis.call('HSET', KEYS[2], 'warn:' .. channel, warn)
end
if from == 'blocked' or from == 'suspended' then
  return answer(0)  -- only a support action lifts these
end
local to = 'active'
if lvl == 2 then
  to = 'blocked'
else
  local worst = math.max(lvl, others)
  if worst >= 1 then
    to = 'throttled'
    if lvl == 0 then why = 'other_channel' end
  elseif warn == 1 or others_warn == 1 then
    to = 'warning'
    if warn == 0 then why = 'other_channel' end
  end
end
if to == from then
  return answer(0)
end
if to == 'active' then why = 'recovered' end
local detail = string.format('%s: %d sends, %d hard bounces (lower bound %.4f), %d complaints '
  .. '(lower bound %.5f) in %d s', channel, sums.s, sums.h, lb_b, sums.c, lb_c, window)
redis.call('HSET', KEYS[2], 'state', to, 'since', now, 'reason', why)
local minid = now_ms - 1100 * 86400 * 1000  -- keep at least 3 years
local id = redis.call('XADD', KEYS[5], 'MINID', '~', minid, '*',
  'at', now, 'actor', 'system', 'action', 'auto', 'from', from, 'to', to, 'reason', why,
  'detail', detail, 'channel', channel, 'job', job_id, 'sends', sums.s, 'hard', sums.h,
  'complaints', sums.c, 'bounce_lb', string.format('%.6f', lb_b),
  'complaint_lb', string.format('%.6f', lb_c))
return answer(1, from, to, id, why, detail, sums.s, sums.h, sums.c)
