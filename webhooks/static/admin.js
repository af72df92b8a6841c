"use strict";
// The support page: views chosen by the URL's hash (#/accounts, #/account/ID,
// #/recipient/ADDRESS?account=ID, #/job/ACCOUNT/ID, #/dead?account=&reason=&since=,
// #/dead/ID), data from the admin API with the token.
// Everything shown may come from users: it becomes text (textContent), never markup.
// The token's name and role come from GET /admin/whoami: the page offers only the actions the
// role allows (the API refuses the others anyway), and every change is made in that name.
const $ = (id) => document.getElementById(id);
const VIEWS = ["accounts", "account", "recipient", "job", "dead", "destinations"];
// the support actions that apply in each state (the API answers 409 to the others)
const ACTIONS = {blocked: ["unblock"], suspended: ["unsuspend"], active: ["suspend"],
                 warning: ["suspend"], throttled: ["suspend"]};
const LABELS = {unblock: "Unblock 解除封鎖", suspend: "Suspend 暫停", unsuspend: "Unsuspend 恢復"};
const SEVERITY = {blocked: 0, suspended: 1, throttled: 2, warning: 3, active: 4};
const MAX_ROWS = 100;  // accounts whose rates are fetched in one list
let notice = null;  // {text, ok}: said once the next view is shown (after an action)
let me = null;  // {name, role, allowed: [action, ...]} of the token entered
const can = (action) => me !== null && me.allowed.includes(action);
// the id rule of every entrance (suppression/ids.py), put in by the server: a malformed
// account or job id is refused here before any call, as the API would (400)
const ID_PATTERN = "__ID_PATTERN__";
const ID_RULE = "__ID_RULE__";
const ID = new RegExp("^(?:" + ID_PATTERN + ")$");
// the job categories (suppression/held.py), put in by the server: held jobs are kept apart by
// category, so support can send the receipts and drop the blast
const CATEGORIES = "__CATEGORIES__";
const CATEGORY_LABELS = {transactional: "交易", notification: "通知", marketing: "推廣"};
const HELD_LABELS = {release: "Release held 放行", discard: "Discard held 棄置"};
const DEAD_LABELS = {replay: "Replay 重送", purge: "Purge 清除"};
function checkId(value, name) {
  if (!ID.test(value)) throw new Error(name + " must be " + ID_RULE + " 編號格式不正確");
  return value;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}
// a link to another view: the hash is built from encoded parts, so data cannot make it a URL
function link(text, ...parts) {
  const a = el("a", text);
  a.href = "#/" + parts.map((p) => encodeURIComponent(String(p))).join("/");
  return a;
}
function row(cells, header) {
  const tr = el("tr");
  for (const cell of cells) {
    const td = el(header ? "th" : "td");
    if (cell instanceof Node) td.append(cell); else if (cell !== undefined && cell !== null)
      td.textContent = String(cell);
    tr.append(td);
  }
  return tr;
}
function table(id, headers, rows, empty) {
  $(id).replaceChildren(row(headers, true), ...rows.map((cells) => row(cells)));
  if (!rows.length) $(id).append(row([empty || "None 沒有"]));
}
function say(text, ok) {
  $("message").textContent = text;
  $("message").className = text ? (ok ? "ok" : "error") : "";
}
const pct = (x) => (x === undefined || x === null ? "" : (100 * Number(x)).toFixed(2) + " %");
// epoch seconds (number or numeral) or an ISO 8601 text, shown as ISO 8601 UTC
function when(value) {
  if (value === undefined || value === null || value === "") return "";
  const n = Number(value);
  const date = Number.isFinite(n) ? new Date(n > 1e12 ? n : n * 1000) : new Date(value);
  return isNaN(date) ? String(value) : date.toISOString().replace(".000Z", "Z");
}

class ApiError extends Error {
  constructor(status, message, json) { super(status + " " + message); this.status = status;
                                       this.json = json; }
}
async function api(method, path, body) {
  const token = $("token").value.trim();
  if (!token) throw new Error("Paste the admin token first. 請先貼上存取權杖。");
  const response = await fetch(path, {
    method, headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body)});
  const json = (response.headers.get("Content-Type") || "").startsWith("application/json");
  const data = json ? await response.json().catch(() => ({})) : {};
  if (!response.ok) throw new ApiError(response.status, data.error || response.statusText, json);
  return data;
}
const q = encodeURIComponent;
async function signIn() {
  me = await api("GET", "/admin/whoami");
  $("whoami").textContent = me.name + " (" + me.role + ")";
  $("dead-link").hidden = !can("dead.list");  // support's: a viewer may not read them
}

// --- routing -------------------------------------------------------------------------------

function route() {
  const [path, query] = (location.hash.replace(/^#\/?/, "") || "accounts").split("?");
  const parts = path.split("/").map((p) => { try { return decodeURIComponent(p); }
                                             catch (e) { return p; } });
  return {view: VIEWS.includes(parts[0]) ? parts[0] : "accounts", args: parts.slice(1),
          query: new URLSearchParams(query || "")};
}
async function render() {
  const {view, args, query} = route();
  for (const name of VIEWS) $("view-" + name).hidden = name !== view;
  if (!$("token").value.trim()) {
    // before the first action: a hint beside the field, no error banner
    say("", true);
    $("token-hint").hidden = false;
    return;
  }
  $("token-hint").hidden = true;
  say("", true);
  try {
    if (me === null) await signIn();
    if (view === "accounts") await showAccounts(query.get("state") || "", query.get("q") || "");
    if (view === "account") await showAccount(args[0]);
    if (view === "recipient") await showRecipient(args[0], query.get("account") || "");
    if (view === "job") await showJob(args[0], args[1], query);
    if (view === "dead") await showDead(query, args[0]);
    if (view === "destinations") await showDestinations();
    if (notice) say(notice.text, notice.ok);
  } catch (err) {
    say(err.message, false);
  } finally {
    notice = null;
  }
}

// --- accounts ------------------------------------------------------------------------------

// "10.00 % (bound 6.1 %) / throttle 2 % · block 5 %" for one rate of one channel
function rateCell(r, kind, t) {
  const cell = el("span", pct(r[kind + "_rate"]) + " (" + r[kind === "bounce" ? "hard_bounces"
    : "complaints"] + "/" + r.sends + ", bound " + pct(r[kind + "_wilson_lower"]) + ")" +
    " · warning " + pct(t["warning_" + kind]) + " · throttle " + pct(t["throttle_" + kind]) +
    " · block " + pct(t["block_" + kind]),
    "level-" + r[kind + "_level"]);
  return cell;
}
function ratesSummary(info, kind) {
  const box = el("span");
  for (const [channel, r] of Object.entries(info.rates || {})) {
    if (box.childNodes.length) box.append(el("br"));
    box.append(channel + ": ", rateCell(r, kind, info.limits.thresholds));
  }
  return box;
}

async function showAccounts(state, filter) {
  $("state-filter").value = state;
  $("account-filter").value = filter;
  const all = await api("GET", "/admin/accounts" + (state ? "?state=" + q(state) : ""));
  // the ones that need support first: blocked, suspended, throttled, then active; by ID
  const wanted = all.filter((a) => a.account_id.includes(filter)).sort((a, b) =>
    (SEVERITY[a.state] ?? 9) - (SEVERITY[b.state] ?? 9) || (a.account_id < b.account_id ? -1 : 1));
  const shown = wanted.slice(0, MAX_ROWS);
  const infos = await Promise.all(shown.map((a) => api("GET", "/admin/accounts/" +
                                                         q(a.account_id)).catch(() => null)));
  table("accounts", ["Account 帳戶", "State 狀態", "Since 自", "Why 原因",
                     "Bounces 退回", "Complaints 投訴", "Held 暫存"],
        shown.map((a, i) => {
          const info = infos[i];
          return [link(a.account_id, "account", a.account_id), el("span", a.state,
                  "state-" + a.state), info ? when(info.since) : "",
                  info ? info.state_reason : "", info ? ratesSummary(info, "bounce") : "",
                  info ? ratesSummary(info, "complaint") : "",
                  a.held ? a.held + " · oldest 最早 " + when(a.held_oldest) : ""];
        }), "No accounts 沒有帳戶");
  $("accounts-more").textContent = wanted.length > shown.length ? (wanted.length - shown.length)
    + " more: filter by state or ID. 尚有更多，請篩選。" : "";
}

// --- one account ---------------------------------------------------------------------------

async function showAccount(id) {
  checkId(id, "account");
  const [info, audit, evidence, domains, held] = await Promise.all([
    api("GET", "/admin/accounts/" + q(id)), api("GET", "/admin/audit/" + q(id) + "?limit=50"),
    api("GET", "/admin/accounts/" + q(id) + "/suppressions?limit=50"),
    api("GET", "/admin/api/accounts/" + q(id) + "/domains"),
    api("GET", "/admin/accounts/" + q(id) + "/held?limit=20")]);
  $("account-title").textContent = info.account_id;
  $("state").textContent = info.state;
  $("state").className = "state-" + info.state;
  $("state-since").textContent = [info.since ? "since 自 " + when(info.since) : "",
    info.state_reason ? "(" + info.state_reason + ")" : "",
    info.probation_until ? "probation until 觀察期至 " + when(info.probation_until) : ""
  ].join(" ");
  // why: the audit record that put the account in its state
  const cause = audit.find((r) => r.to === info.state);
  $("why").textContent = cause && info.state !== "active" ? "Why 原因: " + cause.action + " by "
    + cause.actor + " at " + when(cause.at) + ": " + cause.reason +
    (cause.detail && cause.detail !== cause.actor + ": " + cause.reason ? " — " + cause.detail
     : "") : "";
  const actions = (ACTIONS[info.state] || []).filter((action) => can("accounts." + action));
  showButtons("act", "actions", actions, LABELS, info.account_id);
  showHeld(info, held, actions);

  const t = info.limits.thresholds;
  table("rates", ["Channel 渠道", "Sends 發送", "Bounce rate (bound) 退回率（下限）",
                  "Complaint rate (bound) 投訴率（下限）"],
        Object.entries(info.rates).map(([channel, r]) => [channel, r.sends,
          rateCell(r, "bounce", t), rateCell(r, "complaint", t)]));
  const caps = info.limits.frequency_caps || {caps: {}, period: 0};
  const quiet = info.limits.quiet_hours || {drop: []};
  table("limits", ["Rate/s 速率", "Burst 突發", "Window 時段", "Minimum volume 最少數量",
                   "Consent 同意", "Daily quota 每日配額", "Frequency caps 頻率上限",
                   "Quiet hours (dropped) 靜默時段（捨棄）", "Overrides 覆寫"],
        [[info.limits.rate, info.limits.burst, t.window + " s", "bounces " + t.min_bounce_volume
          + " · complaints " + t.min_complaint_volume, info.limits.consent_mode,
          info.limits.daily_quota ? info.limits.quota_used_today + " / " + info.limits.daily_quota
            : "none 無",
          Object.entries(caps.caps).map(([k, v]) => k + " " + v).join(", ") +
            (Object.keys(caps.caps).length ? " per " + caps.period + " s" : "none 無"),
          quiet.drop.length ? quiet.drop.join(", ") + " " + quiet.from + "–" + quiet.to
            : "none 無",
          Object.entries(info.overrides || {}).map(([k, v]) => k + "=" + v).join(", ")]]);
  table("bounces", ["When 時間", "Channel 渠道", "Kind 類別", "Reason 原因", "Job 工作"],
        (info.recent_bounce_reasons || []).map((b) => [when(b.at), b.channel, b.kind, b.reason,
          b.job ? link(b.job, "job", info.account_id, b.job) : ""]));
  table("account-entries", ["When 時間", "Address 地址", "Channel 渠道", "Reason 原因",
                            "Scope 範圍", "Source 來源", "Evidence 證據", "By 操作者"],
        evidence.map((e) => [when(e.at), recipientLink(e.address, info.account_id), e.channel,
          e.reason, e.scope, source(e.source, info.account_id), e.detail, e.actor]));
  table("domains", ["Domain 網域", "Verified 已驗證", "DMARC", "Return path 退回路徑",
                    "Bulk-sender rules 大量寄件規則", "Selector 選擇器"],
        domains.map((d) => [d.domain, d.verified ? "yes 是 · " + when(d.verified_at) :
          "no 否" + (d.verification ? ": " + (d.verification.missing || []).join("; ") : ""),
          d.dmarc ? "yes 是" : "no 否", d.return_path || "",
          bulkRules((d.verification || {}).bulk_sender), d.selector]));
  table("audit", ["When 時間", "Action 操作", "From → to", "By 操作者", "Reason 原因",
                  "Detail 詳情"],
        audit.map((r) => [when(r.at), r.action, r.from || r.to ? (r.from || "") + " → " +
          (r.to || "") : "", r.actor, r.reason, auditDetail(r)]));
}
// Gmail's and Yahoo's bulk-sender requirements as the last verification found them
function bulkRules(bulk) {
  if (!bulk) return "not verified yet 尚未驗證";
  return bulk.met ? "met 符合" : "not met 不符合: " + bulk.missing.join(", ");
}
function recipientLink(address, account) {
  const a = link(address, "recipient", address);
  if (account) a.href += "?account=" + q(account);
  return a;
}
// "job:<id>" links to the job; anything else is text
function source(value, account) {
  const m = /^job:(.+)$/.exec(value || "");
  return m && account ? link(value, "job", account, m[1]) : (value || "");
}
const AUDIT_SHOWN = new Set(["id", "at", "action", "from", "to", "actor", "reason"]);
function auditDetail(r) {
  const extra = Object.entries(r).filter(([k, v]) => !AUDIT_SHOWN.has(k) && v !== "" &&
    !(k === "detail" && v === r.actor + ": " + r.reason));
  return extra.map(([k, v]) => k + "=" + (/(_at|_until)$/.test(k) ? when(v) : v)).join(", ");
}

// the jobs held while the account is blocked or suspended: by channel and category, the
// oldest (and when it expires), the oldest ids; an unblock must say what becomes of them
function showHeld(info, held, actions) {
  $("held-note").textContent = held.held ? held.held + " jobs held 暫存工作, oldest 最早 " +
    when(held.oldest) + ", which expires 到期 " + when(held.expires_at) + ". Oldest 最早: " :
    "No held jobs 沒有暫存工作";
  for (const j of held.jobs.slice(0, 10)) {
    $("held-note").append(" ", link(j.id, "job", info.account_id, j.id));
  }
  table("held", ["Channel 渠道", "Category 類別", "Jobs 工作", "Oldest 最早"],
        held.by.map((g) => [g.channel, g.category + " " + (CATEGORY_LABELS[g.category] || ""),
                            g.jobs, when(g.oldest)]), "None 沒有");
  const lifts = actions.some((a) => a === "unblock" || a === "unsuspend");
  $("held-choice").hidden = !(held.held && lifts);
  $("held-action").required = !$("held-choice").hidden;
  $("held-action").value = "";
  $("act-category").value = "";
  // the buttons only for a token that may use them (a viewer's page has none)
  const settles = held.held ? ["release", "discard"].filter((a) => can("held." + a)) : [];
  showButtons("held-act", "held-buttons", settles, HELD_LABELS, info.account_id);
}
// form `form`'s submit buttons (in `box`): one per action, labelled from `labels`, each
// submitting its action; the form hidden when there are none
function showButtons(form, box, actions, labels, account) {
  $(box).replaceChildren(...actions.map((action) => {
    const button = el("button", labels[action]);
    button.type = "submit";
    button.value = action;
    return button;
  }));
  $(form).hidden = !actions.length;
  $(form).dataset.account = account;
}
function heldText(s) {
  if (!s) return "";
  if (s.error) return " · held jobs NOT all settled 暫存工作未全部處理: " + s.error;
  return " · held jobs " + (s.action === "release" ? "released 已放行 " : "discarded 已棄置 ") +
    s.settled + (s.category ? " (" + s.category + ")" : "") + ", still held 仍暫存 " +
    s.remaining;
}

async function act(action) {
  const account = $("act").dataset.account;
  const body = {reason: $("reason").value.trim()};
  if (!$("held-choice").hidden) {
    body.held = $("held-action").value;
    if ($("act-category").value) body.category = $("act-category").value;
  }
  const r = await api("POST", "/admin/accounts/" + q(account) + "/" + action, body);
  $("reason").value = "";
  await showAccount(account);
  say(r.account_id + ": " + r.from + " → " + r.state + heldText(r.held) +
      (r.event_published ? "" : " (status event NOT published: tell ops 狀態事件未發佈)"),
      r.event_published && !(r.held && r.held.error));
}
async function settleHeld(action) {
  const account = $("held-act").dataset.account;
  const body = {reason: $("held-reason").value.trim()};
  if ($("held-category").value) body.category = $("held-category").value;
  const r = await api("POST", "/admin/accounts/" + q(account) + "/held/" + action, body);
  $("held-reason").value = "";
  await showAccount(account);
  say(account + heldText(r), !r.error);
}

// --- one recipient -------------------------------------------------------------------------

async function showRecipient(address, account) {
  if (account) checkId(account, "account");
  $("recipient").value = address;
  $("recipient-account").value = account;
  $("recipient-title").textContent = address + (account ? " · " + account : "");
  const found = await api("GET", "/admin/suppression/" + q(address) +
                          (account ? "?account=" + q(account) : ""));
  $("suppressed").textContent = found.suppressed ? "Suppressed 已抑制" : "Not suppressed 未抑制";
  $("suppressed").className = found.suppressed ? "level-2" : "";
  const removable = can("suppression.remove");
  table("entries", ["Channel 渠道", "Reason 原因", "Scope 範圍", "Since 自", "Expires 到期",
                    "Source 來源", "Evidence 證據", "By 操作者", "Learnt from 來自帳戶",
                    ...(removable ? ["Remove 移除"] : [])],
        found.entries.map((e) => {
          const owner = e.account_id || e.learnt_from;
          return [e.channel, e.reason, e.scope + (e.account_id ? " " + e.account_id : ""),
                  when(e.at), when(e.expires_at), source(e.source, owner), e.detail, e.actor,
                  e.learnt_from ? link(e.learnt_from, "account", e.learnt_from) : "",
                  ...(!removable ? [] : [e.scope === "dnc" ? "register 登記冊"
                                         : removeForm(address, e, account)])];
        }), "No entries 沒有記錄");
  await Promise.all([showConsent(address, account), showHistory(address, account)]);
}

function removeForm(address, entry, account) {
  const form = el("form", null, "inline remove");
  const reason = el("input");
  reason.required = true;
  reason.placeholder = "reason 原因";
  reason.maxLength = 1000;
  const button = el("button", "Remove 移除");
  button.type = "submit";
  form.append(reason, button);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    remove(address, entry, reason.value.trim(), account).catch((err) => say(err.message, false));
  });
  return form;
}
async function remove(address, entry, reason, account) {
  const scope = entry.scope === "account" ? "&account=" + q(entry.account_id) : "";
  const r = await api("DELETE", "/admin/suppression/" + q(entry.address) + "?channel=" +
                      q(entry.channel) + scope, {reason});
  await showRecipient(address, account);
  say("Removed 已移除: " + r.removed.map((e) => e.channel + " " + e.reason + " (" + e.scope +
      ")").join(", ") + " for " + r.address, true);
}

// The channels come from the API (GET /admin/channels, the server's declared channels), and
// so does the one an address is read on ("candidates", first): the page guesses none itself.
// Support may pick another channel from the list; the choice holds while the address stays.
async function consentChannel(address) {
  const info = await api("GET", "/admin/channels?address=" + q(address));
  const select = $("consent-channel");
  const kept = select.dataset.address === address ? select.value : "";
  select.replaceChildren(...info.channels.map((c) => {
    const option = el("option", c.name + " (" + c.address + ")");
    option.value = c.name;
    return option;
  }));
  select.value = info.channels.some((c) => c.name === kept) ? kept : info.candidates[0];
  select.dataset.address = address;
  return select.value;
}
async function showConsent(address, account) {
  const channel = await consentChannel(address);
  $("consent-channel").dataset.account = account;
  if (!account) {
    table("consent", ["Consent 同意"], [], "Give an account to see its consent record. " +
          "輸入帳戶以查看同意記錄。");
    return;
  }
  const c = await api("GET", "/admin/consent/" + q(account) + "/" + q(address) + "?channel=" +
                      q(channel));
  const fields = Object.entries(c).filter(([k]) => !["account_id", "recipient"].includes(k));
  table("consent", ["Field 欄位", "Value 值"],
        fields.map(([k, v]) => [k, k.endsWith("_at") || k === "at" ? when(v) : v]));
}

// GET /admin/history/ADDRESS?account=ID: {"address", "jobs": [{account_id, id, channel, address,
// status, attempt, first_seen, updated, ...}]} (a job's id as "id"; "job_id" read too; "at"
// read when there is no "first_seen")
async function showHistory(address, account) {
  $("history-note").textContent = "";
  let jobs;
  try {
    jobs = await api("GET", "/admin/history/" + q(address) + (account ? "?account=" +
                     q(account) : ""));
  } catch (err) {
    $("history").replaceChildren();
    $("history-note").textContent = err.status === 404 && !err.json
      ? "Job history is not available on this server. 此伺服器沒有工作記錄。" : err.message;
    return;
  }
  const list = Array.isArray(jobs) ? jobs : (jobs.jobs || jobs.history || []);
  table("history", ["When 時間", "Account 帳戶", "Job 工作", "Channel 渠道", "Status 狀態"],
        list.map((j) => [when(j.first_seen ?? j.at), link(j.account_id, "account", j.account_id),
                         jobLink(j), j.channel, j.status]),
        "No recent jobs 沒有最近工作");
}

// a job's link from the history: its channel and recipient ride in the hash's query, as the
// job's story does not hold them
function jobLink(j) {
  const id = j.id ?? j.job_id;
  const a = link(id, "job", j.account_id, id);
  const params = new URLSearchParams();
  if (j.channel) params.set("channel", j.channel);
  if (j.address) params.set("recipient", j.address);
  if (params.toString()) a.href += "?" + params;
  return a;
}

// --- one job -------------------------------------------------------------------------------

// GET /admin/jobs/ACCOUNT/ID: the timeline [{status, at, reason, detail, provider,
// provider_message_id, attempt}] (or an object holding it as "timeline")
async function showJob(account, id, query) {
  checkId(account, "account");
  checkId(id, "job");
  $("job-title").textContent = id + " · " + account;
  $("job-note").textContent = "";
  let job;
  try {
    job = await api("GET", "/admin/jobs/" + q(account) + "/" + q(id));
  } catch (err) {
    $("job-fields").replaceChildren();
    $("timeline").replaceChildren();
    $("job-note").textContent = err.status === 404 && !err.json
      ? "Job timelines are not available on this server. 此伺服器沒有工作時間線。" : err.message;
    return;
  }
  const timeline = Array.isArray(job) ? job : (job.timeline || job.events || []);
  const story = Array.isArray(job) ? {} : job;
  // the job's attempt is its timeline's last one, so the two never disagree
  const last = timeline.length ? timeline[timeline.length - 1] : null;
  const shown = {...story, attempt: last ? last.attempt : story.attempt,
                 channel: story.channel ?? query.get("channel"),
                 recipient: story.recipient ?? story.address ?? query.get("recipient"),
                 subject: story.subject};
  for (const k of ["channel", "recipient", "subject"]) if (shown[k] == null) delete shown[k];
  const fields = Object.entries(shown).filter(
    ([k, v]) => v !== undefined && k !== "address" && (v === null || typeof v !== "object"));
  $("job-fields").replaceChildren(...fields.map(([k, v]) => row([k, k.endsWith("at") ? when(v)
                                                                  : v])));
  table("timeline", ["When 時間", "Status 狀態", "Reason 原因", "Detail 詳情",
                     "Provider 供應商", "Provider message ID", "Attempt 嘗試"],
        timeline.map((s) => [when(s.at), s.status, s.reason, s.detail, s.provider,
                             s.provider_message_id, s.attempt]), "No timeline 沒有時間線");
}

// --- destinations (reply-driven shaping) ---------------------------------------------------

// GET /admin/destinations: [{destination, relay, state, rate, until, since, rule, reply}]
async function showDestinations() {
  const rows = await api("GET", "/admin/destinations");
  table("destinations", ["Destination 目的地", "Relay 中繼", "State 狀態", "Rate/s 速率",
                         "Until 直至", "Why 原因"],
        rows.map((d) => [d.destination, d.relay, d.state, d.rate === null ? "" : d.rate,
                         when(d.until), d.reply]),
        "None slowed or paused 沒有減速或暫停");
}

// --- dead letters ------------------------------------------------------------------------

// GET /admin/dead?account=&reason=&since=: [{id, dead_at, account_id, job_id, channel, reason,
// lane, record, bytes}], by time of death; ?id=ID: [that one with routing_key, headers, body]
// (attachment content already left out by the API), or [] when it is not in outbox.dead
async function showDead(query, id) {
  const filters = {account: query.get("account") || "", reason: query.get("reason") || "",
                   since: query.get("since") || ""};
  $("dead-account").value = filters.account;
  $("dead-reason").value = filters.reason;
  $("dead-since").value = filters.since;
  if (filters.account) checkId(filters.account, "account");
  const params = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
  const rows = await api("GET", "/admin/dead" + (params.toString() ? "?" + params : ""));
  table("dead", ["When 時間", "Account 帳戶", "Job 工作", "Channel 渠道", "Reason 原因",
                 "Queue / source 隊列／來源", "Bytes 大小"],
        rows.map((d) => [when(d.dead_at), d.account_id ? link(d.account_id, "account",
          d.account_id) : "", deadLink(d, query), d.channel, d.reason, d.lane || "none 無",
          d.bytes]), "No dead letters 沒有無法投遞訊息");
  $("dead-one").hidden = true;
  if (id) await showDeadLetter(id, query);
}
// a row's link to its dead letter (the filters kept), shown by its job id, else its own id
function deadLink(d, query) {
  const a = link(d.job_id || d.id, "dead", d.id);
  if (query.toString()) a.href += "?" + query;
  if (d.job_id) a.title = d.id;
  return a;
}
async function showDeadLetter(id, query) {
  const [found] = await api("GET", "/admin/dead?id=" + q(id));
  if (!found) throw new Error("Dead letter " + id + " is not in outbox.dead (replayed or purged?)"
                              + " 此訊息已不在 outbox.dead。");
  $("dead-one").hidden = false;
  $("dead-title").textContent = found.id;
  const job = found.account_id && found.job_id
    ? link(found.job_id, "job", found.account_id, found.job_id) : found.job_id;
  table("dead-fields", ["Field 欄位", "Value 值"], [
    ["When 時間", when(found.dead_at)], ["Account 帳戶", found.account_id],
    ["Job 工作", job], ["Channel 渠道", found.channel], ["Reason 原因", found.reason],
    ["Lane (replay to) 重送至", found.lane || "none: cannot be replayed 無法重送"],
    ["Routing key 路由鍵", found.routing_key], ["Job record 工作記錄", recordLink(found.record)],
    ["Bytes 大小", found.bytes]]);
  table("dead-headers", ["Header 標頭", "Value 值"], Object.entries(found.headers || {}).map(
    ([k, v]) => [k, el("span", typeof v === "string" ? v : JSON.stringify(v), "mono")]));
  $("dead-body").textContent = found.body;
  $("dead-body-note").textContent = found.body_cut ? "Cut: only the start is shown. 只顯示開頭。"
    : "";
  // the buttons only for a token that may use them; replay only where there is a lane
  const settles = ["replay", "purge"].filter((a) => can("dead." + a) &&
                                                   (a !== "replay" || found.lane));
  $("dead-buttons").replaceChildren(...settles.map((action) => {
    const button = el("button", DEAD_LABELS[action]);
    button.type = "submit";
    button.value = action;
    return button;
  }));
  $("dead-act").hidden = !settles.length;
  $("dead-act").dataset.id = found.id;
  $("dead-act").dataset.query = query.toString();
}
// "ACCOUNT/JOB", where the job's timeline is kept (an unreadable job's too), as a link to it
function recordLink(record) {
  const m = /^([^/]+)\/([^/]+)$/.exec(record || "");
  return m ? link(record, "job", m[1], m[2]) : (record || "");
}
async function settleDead(action) {
  const id = $("dead-act").dataset.id;
  const r = await api("POST", "/admin/dead/" + action,
                      {ids: [id], reason: $("dead-act-reason").value.trim()});
  $("dead-act-reason").value = "";
  const query = $("dead-act").dataset.query;
  const hash = "#/dead" + (query ? "?" + query : "");
  const text = r.map((d) => (d.job_id || d.id) + (action === "replay"
    ? " replayed to " + d.lane + " 已重送" : " purged 已清除")).join(", ");
  // said once the list is shown again (render clears the banner first)
  notice = {text: text + " (audit " + r.map((d) => d.audit_id).join(", ") + ")", ok: true};
  if (location.hash === hash) await render(); else location.hash = hash;
}

// --- wiring --------------------------------------------------------------------------------

$("accounts-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const params = new URLSearchParams();
  if ($("state-filter").value) params.set("state", $("state-filter").value);
  if ($("account-filter").value.trim()) params.set("q", $("account-filter").value.trim());
  const hash = "#/accounts" + (params.toString() ? "?" + params : "");
  if (location.hash === hash) render(); else location.hash = hash;
});
$("recipient-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const address = $("recipient").value.trim();
  if (!address) return;
  const account = $("recipient-account").value.trim();
  try { if (account) checkId(account, "account"); }
  catch (err) { say(err.message, false); $("recipient-account").focus(); return; }
  const hash = "#/recipient/" + q(address) + (account ? "?account=" + q(account) : "");
  if (location.hash === hash) render(); else location.hash = hash;
});
$("consent-channel").addEventListener("change", () => {
  const {address, account} = $("consent-channel").dataset;
  showConsent(address, account || "").catch((err) => say(err.message, false));
});
$("job-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const account = $("job-account").value.trim();
  const id = $("job-id").value.trim();
  try { checkId(account, "account"); checkId(id, "job"); }
  catch (err) { say(err.message, false); return; }
  const hash = "#/job/" + q(account) + "/" + q(id);
  if (location.hash === hash) render(); else location.hash = hash;
});
$("dead-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const params = new URLSearchParams();
  for (const [name, field] of [["account", "dead-account"], ["reason", "dead-reason"],
                               ["since", "dead-since"]]) {
    if ($(field).value.trim()) params.set(name, $(field).value.trim());
  }
  try { if (params.get("account")) checkId(params.get("account"), "account"); }
  catch (err) { say(err.message, false); return; }
  const hash = "#/dead" + (params.toString() ? "?" + params : "");
  if (location.hash === hash) render(); else location.hash = hash;
});
$("dead-act").addEventListener("submit", (event) => {
  event.preventDefault();
  settleDead(event.submitter.value).catch((err) => say(err.message, false));
});
$("act").addEventListener("submit", (event) => {
  event.preventDefault();
  act(event.submitter.value).catch((err) => say(err.message, false));
});
$("held-act").addEventListener("submit", (event) => {
  event.preventDefault();
  settleHeld(event.submitter.value).catch((err) => say(err.message, false));
});
for (const select of document.querySelectorAll("select.categories")) {
  select.append(new Option("all 全部", ""), ...CATEGORIES.map(
    (c) => new Option(c + " " + (CATEGORY_LABELS[c] || ""), c)));
}
$("token").addEventListener("change", () => {
  me = null;
  $("whoami").textContent = "";
  render();
});
window.addEventListener("hashchange", render);
render();
