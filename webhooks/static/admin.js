"use strict";
const $ = (id) => document.getElementById(id);
let current = null;  // the account on show

// Text only: a value from the API never becomes markup.
function el(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
function row(cells, header) {
  const tr = el("tr");
  for (const cell of cells) tr.append(el(header ? "th" : "td", cell));
  return tr;
}
function say(text, ok) {
  $("message").textContent = text;
  $("message").className = text ? (ok ? "ok" : "error") : "";
}
const pct = (x) => (100 * Number(x)).toFixed(2) + " %";
const when = (s) => (s ? new Date(Number(s) * 1000).toLocaleString() : "");

async function api(method, path, body) {
  const token = $("token").value.trim();
  if (!token) throw new Error("Paste the admin token first. 請先貼上存取權杖。");
  const response = await fetch(path, {
    method, headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(response.status + " " + (data.error || response.statusText));
  return data;
}

function show(info) {
  current = info.account_id;
  $("title").textContent = info.account_id;
  $("state").textContent = info.state;
  $("state").className = "state-" + info.state;
  $("state-note").textContent = [
    info.state_reason ? "(" + info.state_reason + ")" : "",
    info.probation_until ? "probation until 觀察期至 " + when(info.probation_until) : ""
  ].join(" ");
  $("rates").replaceChildren(row(["Channel 渠道", "Sends 發送", "Hard bounces 硬退回",
    "Bounce rate 退回率", "Complaints 投訴", "Complaint rate 投訴率"], true));
  for (const [channel, r] of Object.entries(info.rates)) {
    $("rates").append(row([channel, r.sends, r.hard_bounces, pct(r.bounce_rate),
                           r.complaints, pct(r.complaint_rate)]));
  }
  $("transitions").replaceChildren(row(["When 時間", "Action 操作", "From → to",
    "By 操作者", "Reason 原因"], true));
  for (const t of info.recent_transitions) {
    $("transitions").append(row([when(t.at), t.action, (t.from || "") + " → " + (t.to || ""),
                                 t.actor, t.reason]));
  }
  $("details").hidden = false;
}

async function lookup(id) {
  try {
    show(await api("GET", "/admin/accounts/" + encodeURIComponent(id)));
    say("", true);
  } catch (err) {
    $("details").hidden = true;
    say(err.message, false);
  }
}

async function act(action) {
  const body = {reason: $("reason").value, actor: $("actor").value};
  try {
    const r = await api("POST", "/admin/accounts/" + encodeURIComponent(current) + "/" + action,
                        body);
    await lookup(current);
    say(r.account_id + ": " + r.from + " → " + r.state + (r.event_published ? "" :
        " (status event NOT published: tell ops 狀態事件未發佈)"), r.event_published);
    $("reason").value = "";
  } catch (err) {
    say(err.message, false);
  }
}

async function listBlocked() {
  try {
    const rows = await api("GET", "/admin/accounts?state=blocked");
    $("accounts").replaceChildren();
    for (const a of rows) {
      const button = el("button", a.account_id);
      button.type = "button";
      button.addEventListener("click", () => {
        $("account").value = a.account_id;
        lookup(a.account_id);
      });
      const item = el("li");
      item.append(button);
      $("accounts").append(item);
    }
    if (!rows.length) $("accounts").append(el("li", "None 沒有"));
    $("list").hidden = false;
  } catch (err) {
    say(err.message, false);
  }
}

$("lookup").addEventListener("submit", (e) => {
  e.preventDefault();
  lookup($("account").value.trim());
});
$("act").addEventListener("submit", (e) => {
  e.preventDefault();
  act(e.submitter.value);
});
$("list-blocked").addEventListener("click", listBlocked);
