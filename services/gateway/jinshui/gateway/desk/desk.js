// The police desk console: live alerts from /v1/alerts/stream, their commands, household cards, incidents.
// Vanilla JS, no build step, nothing loaded from elsewhere. The token stays in this tab's sessionStorage.
"use strict";

const TOKEN_KEY = "jinshui.desk.token";
const LANG_KEY = "jinshui.desk.lang";
const OVERDUE_MS = 5 * 60 * 1000; // a HIGH alert not acknowledged within this is marked as waiting too long
const TZ = "Asia/Shanghai";

const TEXT = {
  zh: {
    title: "金水 · 警务工作台",
    feed_off: "未连接",
    feed_connecting: "连接中…",
    feed_live: "实时",
    feed_retry: "重连中…",
    sound: "高级别提示音",
    logout: "退出",
    login_title: "输入令牌",
    login_hint: "开发环境没有登录服务：在终端运行下面的命令，把输出的令牌粘贴到这里。",
    token_placeholder: "粘贴令牌",
    login_go: "进入工作台",
    bad_token: "令牌无效或已过期（{status}）",
    wrong_role: "此令牌无权查看预警（{status}）：请使用民警令牌",
    alerts: "预警",
    f_level: "级别",
    f_status: "状态",
    all: "全部",
    lvl_HIGH: "高",
    lvl_MEDIUM: "中",
    lvl_LOW: "低",
    st_open: "未办结",
    st_raised: "待签收",
    st_acknowledged: "已签收",
    st_resolved: "已处置",
    st_dismissed: "已排除",
    reload: "刷新",
    f_since: "时段",
    since_shift: "本班（12小时内）",
    since_day: "24小时内",
    f_text: "规则、户码、说明",
    handover: "交接班",
    handover_title: "交接班：未办结预警（{at}）",
    handover_beat: "警格 {beat}：高 {HIGH} · 中 {MEDIUM} · 低 {LOW}",
    handover_none: "本警格没有未办结的预警",
    waited: "已等待",
    minutes: "{n} 分钟",
    hh_scan: "扫码",
    scan_title: "扫描户码二维码",
    scan_hint: "将二维码对准摄像头",
    scan_unsupported: "此浏览器不能扫码，请直接输入户码",
    scan_failed: "无法打开摄像头（{detail}），请直接输入户码",
    units: "经营单位",
    origin_police_call: "警情（公安）",
    origin_report: "网格上报",
    matched_on: "关联依据",
    tags_by_role: "标签按角色显示：敏感标签仅民警和社区管理员可见（当前角色：{role}）",
    no_alerts: "暂无预警",
    glance: "未办结：高 {HIGH} · 中 {MEDIUM} · 低 {LOW}",
    glance_overdue: "超时未签收 {n}",
    overdue: "超时未签收",
    attention: "已升级 ×{n}",
    evidence: "证据 {n} 条",
    acknowledge: "签收",
    resolve: "处置完毕",
    dismiss: "排除",
    open_household: "户卡",
    raised_at: "发生",
    by: "经办",
    reason: "理由",
    beat: "警格",
    grid: "网格",
    rule: "规则",
    ack_title: "签收预警",
    resolve_title: "处置完毕",
    dismiss_title: "排除预警",
    reason_optional: "备注（可选）",
    reason_required: "理由（必填）",
    reason_missing: "请填写理由",
    reveal_title: "查看完整证件号",
    reveal_label: "查看目的（必填，将记入审计）",
    cancel: "取消",
    confirm: "确定",
    lookup: "查询",
    hh_placeholder: "户码，如 A1",
    hh_open: "打开户卡",
    person_placeholder: "姓名或地址",
    person_search: "查人员",
    incident_placeholder: "事件编号",
    incident_open: "打开事件",
    incident_recent: "最近事件",
    household: "户卡",
    address: "地址",
    house: "房屋",
    residents: "住户",
    lettings: "出租登记",
    visits: "走访记录",
    incidents: "事件",
    risk: "风险预警",
    tags: "标签",
    name: "姓名",
    kind: "类别",
    id_number: "证件号",
    phone: "电话",
    arrived_at: "入住",
    expected_end: "预计离开",
    masked: "个人信息已脱敏",
    whole_audited: "已显示完整个人信息；本次查看已记入审计（目的：{purpose}）",
    reveal: "查看完整证件号",
    none: "无",
    persons: "人员",
    incident: "事件",
    status: "状态",
    category: "类别",
    opened_at: "立案",
    sources: "来源",
    timeline: "时间线",
    mediations: "调解记录",
    deadlines: "时限",
    joint: "联合事件（警情 + 网格）",
    error: "出错了：{detail}",
    not_found: "未找到：{detail}",
    forbidden: "无权访问：{detail}",
    feed_reset: "预警流已重置，已重新加载",
    other: "其他",
    yes: "是",
    no: "否",
  },
  en: {
    title: "Jinshui · Police desk",
    feed_off: "offline",
    feed_connecting: "connecting…",
    feed_live: "live",
    feed_retry: "reconnecting…",
    sound: "Sound for HIGH",
    logout: "Sign out",
    login_title: "Enter your token",
    login_hint: "There is no login service in development: run this command and paste the token it prints.",
    token_placeholder: "paste the token",
    login_go: "Open the desk",
    bad_token: "The token is not valid or has expired ({status})",
    wrong_role: "This token may not read alerts ({status}): use a police token",
    alerts: "Alerts",
    f_level: "Level",
    f_status: "Status",
    all: "all",
    lvl_HIGH: "HIGH",
    lvl_MEDIUM: "MEDIUM",
    lvl_LOW: "LOW",
    st_open: "open",
    st_raised: "raised",
    st_acknowledged: "acknowledged",
    st_resolved: "resolved",
    st_dismissed: "dismissed",
    reload: "Reload",
    f_since: "Period",
    since_shift: "this shift (12 h)",
    since_day: "last 24 h",
    f_text: "rule, household, explanation",
    handover: "Hand over",
    handover_title: "Hand-over: open alerts ({at})",
    handover_beat: "Beat {beat}: HIGH {HIGH} · MEDIUM {MEDIUM} · LOW {LOW}",
    handover_none: "No open alerts in this beat",
    waited: "waiting",
    minutes: "{n} min",
    hh_scan: "Scan",
    scan_title: "Scan the household's QR code",
    scan_hint: "Hold the QR code to the camera",
    scan_unsupported: "This browser cannot scan: type the household code",
    scan_failed: "The camera could not be opened ({detail}): type the household code",
    units: "Units",
    origin_police_call: "police call",
    origin_report: "grid report",
    matched_on: "matched on",
    tags_by_role: "Tags by role: sensitive tags only for police and community admins (your role: {role})",
    no_alerts: "No alerts",
    glance: "Open: HIGH {HIGH} · MEDIUM {MEDIUM} · LOW {LOW}",
    glance_overdue: "{n} waiting too long",
    overdue: "waiting too long",
    attention: "escalated ×{n}",
    evidence: "{n} pieces of evidence",
    acknowledge: "Acknowledge",
    resolve: "Resolve",
    dismiss: "Dismiss",
    open_household: "Household",
    raised_at: "raised",
    by: "by",
    reason: "reason",
    beat: "beat",
    grid: "grid",
    rule: "rule",
    ack_title: "Acknowledge the alert",
    resolve_title: "Resolve the alert",
    dismiss_title: "Dismiss the alert",
    reason_optional: "Note (optional)",
    reason_required: "Reason (required)",
    reason_missing: "Give a reason",
    reveal_title: "Show ID numbers whole",
    reveal_label: "Purpose (required; the read is audited)",
    cancel: "Cancel",
    confirm: "OK",
    lookup: "Look up",
    hh_placeholder: "household code, e.g. A1",
    hh_open: "Open card",
    person_placeholder: "name or address",
    person_search: "Find persons",
    incident_placeholder: "incident id",
    incident_open: "Open incident",
    incident_recent: "Recent incidents",
    household: "Household",
    address: "Address",
    house: "House",
    residents: "Residents",
    lettings: "Lettings",
    visits: "Visits",
    incidents: "Incidents",
    risk: "Risk alerts",
    tags: "Tags",
    name: "Name",
    kind: "Kind",
    id_number: "ID number",
    phone: "Phone",
    arrived_at: "Arrived",
    expected_end: "Expected to leave",
    masked: "personal data masked",
    whole_audited: "Personal data shown whole; this read is audited (purpose: {purpose})",
    reveal: "Show ID numbers whole",
    none: "none",
    persons: "Persons",
    incident: "Incident",
    status: "Status",
    category: "Category",
    opened_at: "Opened",
    sources: "Sources",
    timeline: "Timeline",
    mediations: "Mediation record",
    deadlines: "Deadlines",
    joint: "joint incident (police call + grid)",
    error: "Something went wrong: {detail}",
    not_found: "Not found: {detail}",
    forbidden: "Not allowed: {detail}",
    feed_reset: "The alert feed was reset; alerts reloaded",
    other: "Other",
    yes: "yes",
    no: "no",
  },
};

// Field names as the APIs give them, for table headers (unknown fields show as they are).
const FIELDS = {
  zh: {
    visit_id: "走访编号", grid_worker: "网格员", visited_at: "走访时间", concerns: "发现问题", people_present: "在场人数",
    follow_up_requested: "需回访", level: "级别", explanation: "说明", letting_id: "出租编号", landlord: "房东",
    starts_on: "起租", stopped_on: "停租", stop_reason: "停租原因", tenants: "租客", id: "编号", origin: "来源",
    external_id: "外部编号", occurred_at: "发生时间", description: "描述", at: "时间", what: "事项", actor: "经办",
    detail: "详情", origins: "来源", household_code: "户码", use: "用途", building: "楼", unit: "单元", floor: "层",
    room: "室", sex: "性别", birth_date: "出生日期", departure_check: "离开核查",
    unit_id: "单位编号", licence_number: "许可证号", operator: "经营者", registered_at: "登记时间",
    acknowledged_by: "签收人", source_id: "来源编号", mediators: "调解员", method: "方式", held_at: "调解时间",
    outcome: "结果", agreement: "协议", external_ids: "外部编号", submitted_by: "提交方", recorded_by: "记录人",
    assignee: "承办人", note: "备注",
  },
  en: {},
};

const state = {
  lang: localStorage.getItem(LANG_KEY) || "zh",
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  alerts: new Map(), // alert id -> alert (fields as GET /v1/alerts gives them)
  lastEventId: null,
  feedAbort: null,
  feedState: "off",
  retryMs: 1000,
  audio: null,
  card: null, // what the lookup panel shows: {kind, render}
};

// --- small helpers ----------------------------------------------------------------------------------------
function t(key, vars) {
  let s = (TEXT[state.lang] && TEXT[state.lang][key]) || TEXT.zh[key] || key;
  for (const [k, v] of Object.entries(vars || {})) s = s.replaceAll(`{${k}}`, String(v));
  return s;
}

function $(id) {
  return document.getElementById(id);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const timeFormat = {};
function when(value) {
  if (!value) return "";
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  const locale = state.lang === "zh" ? "zh-CN" : "en-GB";
  timeFormat[locale] ||= new Intl.DateTimeFormat(locale, {
    timeZone: TZ,
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    hour12: false,
  });
  return timeFormat[locale].format(d);
}

function text(v) {
  if (v === undefined || v === null || v === "") return "—";
  if (typeof v === "boolean") return t(v ? "yes" : "no");
  if (Array.isArray(v)) return v.map(text).join(", ");
  if (typeof v === "object") return JSON.stringify(v);
  if (typeof v === "string" && /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}/.test(v)) return when(v);
  return String(v);
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.title)) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, { method = "GET", body, headers } = {}) {
  const init = { method, headers: { Authorization: `Bearer ${state.token}`, Accept: "application/json", ...headers } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const r = await fetch(path, init);
  const type = r.headers.get("content-type") || "";
  const data = type.includes("json") ? await r.json().catch(() => null) : await r.text();
  if (!r.ok) throw new ApiError(r.status, typeof data === "object" ? data : { detail: data });
  return data;
}

function problemText(e) {
  const detail = e instanceof ApiError ? e.message : String(e);
  if (e.status === 404) return t("not_found", { detail });
  if (e.status === 401 || e.status === 403) return t("forbidden", { detail });
  return t("error", { detail });
}

// --- language ----------------------------------------------------------------------------------------------
function applyLanguage() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  document.title = t("title");
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll("[data-i18n-placeholder]")) {
    node.placeholder = t(node.dataset.i18nPlaceholder);
  }
  $("lang").value = state.lang;
  setFeedState(state.feedState);
  renderAlerts();
  if (state.card) state.card.render();
}

// --- the alerts ------------------------------------------------------------------------------------------
const OPEN = new Set(["raised", "acknowledged"]);
const LEVEL_ORDER = { HIGH: 0, MEDIUM: 1, LOW: 2 };

function overdue(a, now = Date.now()) {
  return a.level === "HIGH" && a.status === "raised" && now - new Date(a.raised_at).getTime() > OVERDUE_MS;
}

const SHIFT_MS = 12 * 3600 * 1000;

async function loadAlerts() {
  const open = await api("/v1/alerts?status=raised&status=acknowledged&limit=500");
  const since = new Date(Date.now() - 2 * SHIFT_MS).toISOString();
  const recent = await api(`/v1/alerts?since=${encodeURIComponent(since)}&limit=500`);
  state.alerts.clear();
  for (const a of [...(recent.alerts || []), ...(open.alerts || [])]) state.alerts.set(a.id, a);
  renderAlerts();
}

// The alert history the filters ask for: level, status, period (the shift: 12 hours), and text.
function filtered(now) {
  const level = $("f-level").value;
  const status = $("f-status").value;
  const period = { shift: SHIFT_MS, day: 2 * SHIFT_MS }[$("f-since").value];
  const words = $("f-text").value.trim().toLowerCase();
  return [...state.alerts.values()]
    .filter((a) => !level || a.level === level)
    .filter((a) => !status || (status === "open" ? OPEN.has(a.status) : a.status === status))
    .filter((a) => !period || OPEN.has(a.status) || now - new Date(a.raised_at).getTime() <= period)
    .filter(
      (a) =>
        !words ||
        [a.rule, a.household_code, a.explanation, a.beat, a.grid].some((v) => String(v || "").toLowerCase().includes(words)),
    );
}

function renderAlerts() {
  const list = $("alert-list");
  if (!list) return;
  const now = Date.now();
  const shown = filtered(now).sort(
      (a, b) =>
        Number(overdue(b, now)) - Number(overdue(a, now)) ||
        Number(OPEN.has(b.status)) - Number(OPEN.has(a.status)) ||
        (LEVEL_ORDER[a.level] ?? 9) - (LEVEL_ORDER[b.level] ?? 9) ||
        String(b.raised_at).localeCompare(String(a.raised_at)),
    );
  list.replaceChildren(...shown.map((a) => alertItem(a, now)));
  $("alerts-empty").hidden = shown.length > 0;

  const counts = { HIGH: 0, MEDIUM: 0, LOW: 0 };
  let late = 0;
  for (const a of state.alerts.values()) {
    if (OPEN.has(a.status) && a.level in counts) counts[a.level] += 1;
    if (overdue(a, now)) late += 1;
  }
  const glance = [el("span", {}, t("glance", counts))];
  if (late) glance.push(el("span", { class: "badge overdue" }, t("glance_overdue", { n: late })));
  $("glance").replaceChildren(...glance);
  $("desk").dataset.shown = String(shown.length);
  if (state.card && state.card.followsAlerts) state.card.render();
}

// The hand-over (交接班): the open alerts of the caller's beat(s), at a glance, grouped by beat.
function handover() {
  showCard(renderHandover, true);
}

function renderHandover() {
  const now = Date.now();
  const open = [...state.alerts.values()].filter((a) => OPEN.has(a.status));
  const beats = [...new Set(open.map((a) => a.beat || "—"))].sort();
  const groups = beats.map((beat) => {
    const here = open
      .filter((a) => (a.beat || "—") === beat)
      .sort(
        (a, b) =>
          (LEVEL_ORDER[a.level] ?? 9) - (LEVEL_ORDER[b.level] ?? 9) ||
          String(a.raised_at).localeCompare(String(b.raised_at)),
      );
    const counts = { HIGH: 0, MEDIUM: 0, LOW: 0, beat };
    for (const a of here) if (a.level in counts) counts[a.level] += 1;
    return el(
      "section",
      { class: "card-section", dataset: { beat } },
      el("h4", { class: "beat-head" }, t("handover_beat", counts)),
      el(
        "table",
        {},
        el(
          "thead",
          {},
          el("tr", {}, ["level", "rule", "household_code", "status", "raised_at", "waited", "acknowledged_by"].map((k) => el("th", {}, label(k)))),
        ),
        el(
          "tbody",
          {},
          here.map((a) =>
            el(
              "tr",
              { class: overdue(a, now) ? "overdue" : "", dataset: { alertId: a.id } },
              el("td", { dataset: { field: "level" } }, t(`lvl_${a.level}`)),
              el("td", { dataset: { field: "rule" } }, a.rule || "—"),
              el("td", { dataset: { field: "household_code" } }, a.household_code || "—"),
              el("td", { dataset: { field: "status" } }, t(`st_${a.status}`), overdue(a, now) ? ` · ${t("overdue")}` : ""),
              el("td", { dataset: { field: "raised_at" } }, when(a.raised_at)),
              el("td", { dataset: { field: "waited" } }, t("minutes", { n: Math.max(0, Math.floor((now - new Date(a.raised_at).getTime()) / 60000)) })),
              el("td", { dataset: { field: "acknowledged_by" } }, a.acknowledged_by || "—"),
            ),
          ),
        ),
      ),
    );
  });
  $("card").replaceChildren(
    el(
      "article",
      { class: "handover" },
      el("h3", {}, t("handover_title", { at: when(new Date(now).toISOString()) })),
      groups.length ? groups : el("p", { class: "muted" }, t("handover_none")),
    ),
  );
}

function alertItem(a, now) {
  const late = overdue(a, now);
  const actions = [];
  if (a.status === "raised") actions.push(button("acknowledge", () => command(a, "acknowledge"), "act-ack"));
  if (OPEN.has(a.status)) {
    actions.push(button("resolve", () => command(a, "resolve"), "act-resolve"));
    actions.push(button("dismiss", () => command(a, "dismiss"), "act-dismiss"));
  }
  if (a.household_code) actions.push(button("open_household", () => openHousehold(a.household_code), "act-hh"));
  const closedBy = a.closed_by || a.acknowledged_by;
  return el(
    "li",
    {
      class: `alert level-${a.level || "LOW"} status-${a.status}${late ? " overdue" : ""}`,
      dataset: { alertId: a.id, status: a.status, level: a.level || "" },
    },
    el(
      "div",
      { class: "alert-head" },
      el("span", { class: `badge level level-${a.level}` }, t(`lvl_${a.level}`)),
      el("span", { class: "rule", title: t("rule") }, a.rule || "—"),
      el("span", { class: `badge status st-${a.status}` }, t(`st_${a.status}`)),
      late ? el("span", { class: "badge overdue" }, t("overdue")) : null,
      a.attention ? el("span", { class: "badge attention" }, t("attention", { n: a.attention })) : null,
      el("time", { datetime: a.raised_at }, when(a.raised_at)),
    ),
    el("p", { class: "explanation" }, a.explanation || ""),
    el(
      "p",
      { class: "meta" },
      `${t("beat")} ${a.beat || "—"} · ${t("grid")} ${a.grid || "—"}`,
      a.household_code ? ` · ${t("household")} ${a.household_code}` : "",
      Array.isArray(a.evidence) && a.evidence.length ? ` · ${t("evidence", { n: a.evidence.length })}` : "",
      closedBy ? ` · ${t("by")} ${closedBy}` : "",
      a.close_reason ? ` · ${t("reason")}: ${a.close_reason}` : "",
    ),
    actions.length ? el("div", { class: "actions" }, actions) : null,
  );
}

function button(key, onclick, cls) {
  return el("button", { type: "button", class: cls, onclick }, t(key));
}

// One CloudEvent from the feed: fold it into what the desk shows.
function applyEvent(ce) {
  const verb = String(ce.type || "").replace(/^org\.jinshui\.risk\.alert\./, "").replace(/\.v\d+$/, "");
  const d = ce.data || {};
  if (!d.alert_id) return;
  const known = state.alerts.get(d.alert_id);
  if (verb === "raised") {
    const fresh = !known;
    state.alerts.set(d.alert_id, {
      ...(known || {}),
      id: d.alert_id,
      rule: d.rule,
      level: d.level,
      status: known ? known.status : "raised",
      household_code: d.household_code,
      grid: d.grid,
      beat: d.beat,
      explanation: d.explanation,
      evidence: d.evidence || [],
      raised_at: d.raised_at || ce.time,
      attention: known ? known.attention : 0,
    });
    if (fresh && d.level === "HIGH") beep();
  } else if (!known) {
    // Changed before this desk loaded it: read it whole.
    api(`/v1/alerts/${encodeURIComponent(d.alert_id)}`)
      .then((a) => {
        state.alerts.set(a.id, a);
        renderAlerts();
      })
      .catch(() => {});
    return;
  } else {
    const a = { ...known, level: d.level || known.level, rule: d.rule || known.rule };
    if (d.status) a.status = d.status;
    if (verb === "acknowledged") Object.assign(a, { acknowledged_by: d.by, acknowledged_at: d.at });
    if (verb === "resolved" || verb === "dismissed") Object.assign(a, { closed_by: d.by, close_reason: d.reason });
    if (verb === "escalated") a.attention = d.attention ?? (a.attention || 0) + 1;
    if (verb === "evidence_added" && Array.isArray(d.evidence)) a.evidence = [...(a.evidence || []), ...d.evidence];
    state.alerts.set(a.id, a);
    if (verb === "escalated" && a.level === "HIGH") beep();
  }
  renderAlerts();
}

// --- the live feed: fetch() streaming (EventSource cannot send the token), SSE parsed here ---------------------
function setFeedState(s) {
  state.feedState = s;
  const node = $("feed-state");
  node.dataset.state = s;
  node.className = `feed-state ${s}`;
  node.textContent = t(`feed_${s}`);
}

async function runFeed() {
  while (state.token) {
    const abort = new AbortController();
    state.feedAbort = abort;
    setFeedState(state.feedState === "off" ? "connecting" : "retry");
    try {
      const headers = { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" };
      if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
      const r = await fetch("/v1/alerts/stream", { headers, signal: abort.signal, cache: "no-store" });
      if (r.status === 401 || r.status === 403) {
        logout(t(r.status === 401 ? "bad_token" : "wrong_role", { status: r.status }));
        return;
      }
      if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}`);
      setFeedState("live");
      state.retryMs = 1000;
      await readSse(r.body, onSse);
    } catch (e) {
      if (abort.signal.aborted) return;
    }
    if (!state.token) return;
    setFeedState("retry");
    await new Promise((res) => setTimeout(res, state.retryMs));
    state.retryMs = Math.min(state.retryMs * 2, 30000);
  }
}

async function readSse(body, handle) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let ev = { id: null, event: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
      if (line === "") {
        if (ev.data.length || ev.id !== null) handle({ id: ev.id, event: ev.event, data: ev.data.join("\n") });
        ev = { id: null, event: "message", data: [] };
        continue;
      }
      if (line.startsWith(":")) continue; // comment: connected, heartbeat
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? "" : line.slice(colon + 1);
      if (val.startsWith(" ")) val = val.slice(1);
      if (field === "data") ev.data.push(val);
      else if (field === "event") ev.event = val;
      else if (field === "id") ev.id = val;
    }
  }
}

function onSse(ev) {
  if (ev.id) state.lastEventId = ev.id;
  if (ev.event === "alert") {
    try {
      applyEvent(JSON.parse(ev.data));
    } catch (e) {
      console.warn("alert event not understood", e);
    }
  } else if (ev.event === "reset") {
    state.lastEventId = null;
    loadAlerts().catch(() => {});
    flash(t("feed_reset"));
  } else if (ev.event === "reconnect" && state.feedAbort) {
    state.feedAbort.abort();
    setTimeout(() => runFeed(), 0);
  }
}

// --- sound: a short beep made with WebAudio (no file) -------------------------------------------------------
function beep() {
  if (!$("sound").checked) return;
  try {
    state.audio ||= new (window.AudioContext || window.webkitAudioContext)();
    const ctx = state.audio;
    for (const [i, freq] of [880, 660, 880].entries()) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      const start = ctx.currentTime + i * 0.22;
      osc.type = "square";
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.0001, start);
      gain.gain.exponentialRampToValueAtTime(0.2, start + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, start + 0.18);
      osc.connect(gain).connect(ctx.destination);
      osc.start(start);
      osc.stop(start + 0.2);
    }
    document.body.dataset.beeps = String(Number(document.body.dataset.beeps || 0) + 1);
  } catch (e) {
    console.warn("no sound", e);
  }
}

// --- the reason dialog ------------------------------------------------------------------------------------
function askReason({ title, label, required, about }) {
  const dialog = $("reason-dialog");
  $("reason-title").textContent = title;
  $("reason-label").textContent = label;
  $("reason-alert").textContent = about || "";
  $("reason-error").textContent = "";
  $("reason").value = "";
  $("reason").required = required;
  return new Promise((resolve) => {
    const done = (value) => {
      $("reason-form").onsubmit = null;
      $("reason-cancel").onclick = null;
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(value);
    };
    $("reason-form").onsubmit = (e) => {
      e.preventDefault();
      const value = $("reason").value.trim();
      if (required && !value) {
        $("reason-error").textContent = t("reason_missing");
        return;
      }
      done(value);
    };
    $("reason-cancel").onclick = () => done(null);
    dialog.onclose = () => done(null);
    dialog.showModal();
    $("reason").focus();
  });
}

async function command(a, verb) {
  const required = verb !== "acknowledge";
  const titles = { acknowledge: "ack_title", resolve: "resolve_title", dismiss: "dismiss_title" };
  const reason = await askReason({
    title: t(titles[verb]),
    label: t(required ? "reason_required" : "reason_optional"),
    required,
    about: `${t(`lvl_${a.level}`)} · ${a.rule} · ${a.explanation || ""}`,
  });
  if (reason === null) return;
  try {
    const updated = await api(`/v1/alerts/${encodeURIComponent(a.id)}/${verb}`, {
      method: "POST",
      body: reason ? { reason } : {},
    });
    if (updated && updated.id) {
      const known = state.alerts.get(updated.id) || {};
      state.alerts.set(updated.id, { ...known, ...updated });
    }
    renderAlerts();
  } catch (e) {
    flash(problemText(e));
    if (e.status === 409) loadAlerts().catch(() => {});
  }
}

function flash(message) {
  $("lookup-error").textContent = message;
}

// --- household card, persons, incidents -----------------------------------------------------------------------
function section(titleKey, ...body) {
  return el("section", { class: "card-section" }, el("h4", {}, t(titleKey)), ...body);
}

function table(rows, columns) {
  if (!Array.isArray(rows) || rows.length === 0) return el("p", { class: "muted" }, t("none"));
  const keys = columns || [...new Set(rows.flatMap((r) => (r && typeof r === "object" ? Object.keys(r) : [])))];
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, keys.map((k) => el("th", {}, label(k))))),
    el(
      "tbody",
      {},
      rows.map((r) => el("tr", {}, keys.map((k) => el("td", { dataset: { field: k } }, cell(k, r && r[k]))))),
    ),
  );
}

function cell(k, v) {
  if (k === "tags" && Array.isArray(v)) {
    if (!v.length) return "—";
    const chips = v.map((tag) =>
      el("span", { class: `tag${tag.sensitive ? " sensitive" : ""}`, title: tag.reason || "" }, tag.label || tag.tag),
    );
    const span = el("span", {}, chips);
    return span;
  }
  if ((k === "origin" || k === "origins") && v) {
    return [].concat(v).map((o) => (TEXT.zh[`origin_${o}`] ? t(`origin_${o}`) : o)).join(" + ");
  }
  if (k === "persons" && Array.isArray(v)) return v.map((p) => p.name || "?").join("、") || "—";
  if (k === "operator" && v && typeof v === "object") return [v.name, v.id_number, v.phone].filter(Boolean).join(" ");
  if (k === "level" && TEXT.zh[`lvl_${v}`]) return t(`lvl_${v}`);
  if (k === "status" && TEXT.zh[`st_${v}`]) return t(`st_${v}`);
  return text(v);
}

function label(k) {
  if (TEXT[state.lang][k]) return t(k);
  return (FIELDS[state.lang] && FIELDS[state.lang][k]) || k.replaceAll("_", " ");
}

function facts(obj, keys) {
  return el(
    "dl",
    { class: "facts" },
    keys
      .filter((k) => obj[k] !== undefined && obj[k] !== null && obj[k] !== "")
      .map((k) => [el("dt", {}, label(k)), el("dd", { dataset: { field: k } }, text(obj[k]))]),
  );
}

function showCard(render, followsAlerts = false) {
  state.card = { render, followsAlerts };
  flash("");
  render();
}

async function openHousehold(code, purpose) {
  code = String(code || "").trim();
  if (!code) return;
  try {
    const headers = purpose ? { "X-Purpose": encodeURIComponent(purpose) } : undefined;
    const card = await api(`/v1/households/${encodeURIComponent(code)}`, { headers });
    let incidents = null;
    try {
      incidents = (await api(`/v1/incidents?household_code=${encodeURIComponent(card.code || code)}&limit=20`)).items;
    } catch {
      incidents = null; // incidents not there (yet), or not for this role
    }
    showCard(() => renderHousehold(card, incidents, purpose), true);
  } catch (e) {
    flash(problemText(e));
  }
}

function renderHousehold(card, incidents, purpose) {
  const whole = card.personal_data === "whole";
  const residents = Array.isArray(card.residents) ? card.residents : [];
  const alerts = [...state.alerts.values()].filter((a) => a.household_code === card.code);
  const known = new Set(["code", "address", "grid", "beat", "house", "residents", "lettings", "visits", "tags"]);
  for (const k of ["personal_data", "incidents", "risk", "units", "merged_into"]) known.add(k);
  const extra = Object.keys(card).filter((k) => !known.has(k));
  $("card").replaceChildren(
    el(
      "article",
      { class: "household", dataset: { code: card.code || "" } },
      el("h3", {}, `${t("household")} ${card.code || ""}`),
      facts(card, ["address", "grid", "beat"]),
      card.house && typeof card.house === "object" ? section("house", facts(card.house, Object.keys(card.house))) : null,
      section(
        "residents",
        el(
          "p",
          { class: whole ? "audited" : "muted", dataset: { personalData: card.personal_data || "" } },
          whole ? t("whole_audited", { purpose: purpose || "" }) : t("masked"),
        ),
        table(residents, ["name", "kind", "id_number", "phone", "arrived_at", "expected_end", "tags"]),
        el("p", { class: "muted tags-by-role" }, t("tags_by_role", { role: tokenRole() || "—" })),
        !whole && residents.length
          ? el("button", { type: "button", class: "act-reveal", onclick: () => reveal(card.code) }, t("reveal"))
          : null,
      ),
      card.tags !== undefined ? section("tags", table(Array.isArray(card.tags) ? card.tags : [card.tags])) : null,
      section("lettings", table(card.lettings)),
      Array.isArray(card.units)
        ? section("units", table(card.units, ["name", "category", "licence_number", "operator", "registered_at"]))
        : null,
      section("visits", table(card.visits)),
      section(
        "incidents",
        incidents === null
          ? el("p", { class: "muted" }, "—")
          : table(
              incidents.map((i) => ({ ...i })),
              ["id", "category", "kind", "status", "opened_at", "origins"],
            ),
        incidents && incidents.length
          ? el(
              "div",
              { class: "actions" },
              incidents.map((i) => el("button", { type: "button", onclick: () => openIncident(i.id) }, i.id)),
            )
          : null,
      ),
      section("risk", table(alerts, ["level", "rule", "status", "raised_at", "explanation"])),
      extra.map((k) => el("section", { class: "card-section" }, el("h4", {}, k), table([].concat(card[k])))),
    ),
  );
}

async function reveal(code) {
  const purpose = await askReason({ title: t("reveal_title"), label: t("reveal_label"), required: true, about: code });
  if (purpose) await openHousehold(code, purpose);
}

async function searchPersons(q) {
  q = String(q || "").trim();
  if (!q) return;
  try {
    const body = /\d|号|路|街|区|室|-/.test(q) ? { address: q } : { name_prefix: q };
    const found = (await api("/v1/persons/search", { method: "POST", body })).persons || [];
    showCard(() =>
      $("card").replaceChildren(
        el(
          "article",
          {},
          el("h3", {}, `${t("persons")}: ${q}`),
          table(found, ["name", "id_number", "phone", "household_code", "address", "kind"]),
          el(
            "div",
            { class: "actions" },
            [...new Set(found.map((p) => p.household_code).filter(Boolean))].map((c) =>
              el("button", { type: "button", onclick: () => openHousehold(c) }, `${t("household")} ${c}`),
            ),
          ),
        ),
      ),
    );
  } catch (e) {
    flash(problemText(e));
  }
}

async function openIncident(id) {
  id = String(id || "").trim();
  if (!id) return;
  try {
    const inc = await api(`/v1/incidents/${encodeURIComponent(id)}`);
    showCard(() => renderIncident(inc));
  } catch (e) {
    flash(problemText(e));
  }
}

function renderIncident(inc) {
  const lists = ["sources", "timeline", "mediations", "deadlines"];
  const scalar = Object.keys(inc).filter((k) => !lists.includes(k) && (inc[k] === null || typeof inc[k] !== "object"));
  $("card").replaceChildren(
    el(
      "article",
      { class: "incident", dataset: { incidentId: inc.id || "" } },
      el("h3", {}, `${t("incident")} ${inc.id || ""}`),
      inc.joint ? el("p", { class: "badge joint" }, t("joint")) : null,
      facts(inc, scalar),
      section(
        "sources",
        table(inc.sources, ["origin", "external_id", "category", "occurred_at", "description", "persons", "submitted_by"]),
      ),
      section(
        "timeline",
        table(
          (inc.timeline || []).map((e) => ({ ...e, detail: timelineDetail(e.detail) })),
          ["at", "what", "actor", "detail"],
        ),
      ),
      section("mediations", table(inc.mediations, ["held_at", "mediators", "method", "outcome", "agreement", "recorded_by"])),
      Array.isArray(inc.deadlines) ? section("deadlines", table(inc.deadlines)) : null,
    ),
  );
}

// One line for a timeline entry's detail: what moved, which source joined, what the mediation came to.
const DETAIL_NOISE = new Set(["at", "by", "beat", "grid", "incident_id", "person_hashes", "category", "household_code"]);
function timelineDetail(d) {
  if (!d || typeof d !== "object") return text(d);
  const parts = [];
  if (d.from_status || d.to_status) parts.push(`${cell("status", d.from_status)} → ${cell("status", d.to_status)}`);
  if (d.source && typeof d.source === "object") parts.push(`${cell("origin", d.source.origin)} ${d.source.external_id || ""}`);
  if (d.method || d.outcome) parts.push([d.method, d.outcome].filter(Boolean).join(" · "));
  const match = d.reason && typeof d.reason === "object" ? d.reason : d.match;
  if (match && typeof match === "object" && match.score !== undefined) {
    parts.push(`${t("matched_on")}: ${match.score}（${(match.fields || []).join(", ")}）`);
  }
  for (const k of ["assignee", "reason", "agreement", "note"]) {
    if (d[k] && typeof d[k] !== "object") parts.push(`${label(k)}: ${text(d[k])}`);
  }
  if (parts.length) return parts.join("；");
  return Object.entries(d)
    .filter(([k, v]) => !DETAIL_NOISE.has(k) && v !== null && typeof v !== "object")
    .map(([k, v]) => `${label(k)}: ${text(v)}`)
    .join("；");
}

async function recentIncidents() {
  try {
    const items = (await api("/v1/incidents?limit=20")).items || [];
    showCard(() =>
      $("card").replaceChildren(
        el(
          "article",
          {},
          el("h3", {}, t("incidents")),
          table(items, ["id", "category", "status", "household_code", "opened_at", "origins"]),
          el(
            "div",
            { class: "actions" },
            items.map((i) => el("button", { type: "button", onclick: () => openIncident(i.id) }, i.id)),
          ),
        ),
      ),
    );
  } catch (e) {
    flash(problemText(e));
  }
}

// --- household code from its QR: the camera through BarcodeDetector where the browser has it, else typing ---------
function codeFromQr(raw) {
  const value = String(raw || "").trim();
  const inUrl = value.match(/\/households\/([^/?#]+)/);
  return inUrl ? decodeURIComponent(inUrl[1]) : value;
}

async function scanHousehold() {
  if (!("BarcodeDetector" in window) || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    flash(t("scan_unsupported"));
    $("hh-code").focus();
    return;
  }
  const dialog = $("scan-dialog");
  const video = $("scan-video");
  let stream = null;
  let done = false;
  const stop = () => {
    done = true;
    if (stream) for (const track of stream.getTracks()) track.stop();
    video.srcObject = null;
    if (dialog.open) dialog.close();
  };
  $("scan-cancel").onclick = stop;
  dialog.onclose = stop;
  try {
    const detector = new BarcodeDetector({ formats: ["qr_code"] });
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
    video.srcObject = stream;
    dialog.showModal();
    await video.play();
    while (!done) {
      const found = await detector.detect(video).catch(() => []);
      const code = found.length ? codeFromQr(found[0].rawValue) : "";
      if (code) {
        stop();
        $("hh-code").value = code;
        await openHousehold(code);
        return;
      }
      await new Promise((res) => setTimeout(res, 250));
    }
  } catch (e) {
    stop();
    flash(t("scan_failed", { detail: e && e.name ? e.name : String(e) }));
    $("hh-code").focus();
  }
}

function tokenRole() {
  try {
    const part = state.token.split(".")[1].replaceAll("-", "+").replaceAll("_", "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4))).role || "";
  } catch {
    return "";
  }
}

// --- sign in / out -------------------------------------------------------------------------------------------
async function start() {
  $("login").hidden = true;
  $("desk").hidden = false;
  $("logout").hidden = false;
  try {
    await loadAlerts();
  } catch (e) {
    if (e.status === 401 || e.status === 403) {
      logout(t(e.status === 401 ? "bad_token" : "wrong_role", { status: e.status }));
      return;
    }
    flash(problemText(e));
  }
  runFeed();
}

function logout(message) {
  state.token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.feedAbort) state.feedAbort.abort();
  state.alerts.clear();
  state.lastEventId = null;
  setFeedState("off");
  $("desk").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

function tick() {
  $("clock").textContent = when(new Date().toISOString());
}

document.addEventListener("DOMContentLoaded", () => {
  $("lang").addEventListener("change", (e) => {
    state.lang = e.target.value in TEXT ? e.target.value : "zh";
    localStorage.setItem(LANG_KEY, state.lang);
    applyLanguage();
  });
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim().replace(/^Bearer\s+/i, "");
    if (!token) return;
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    // a user gesture: the sound may start from here on
    try {
      state.audio ||= new (window.AudioContext || window.webkitAudioContext)();
    } catch {}
    start();
  });
  $("logout").addEventListener("click", () => logout());
  $("f-level").addEventListener("change", renderAlerts);
  $("f-status").addEventListener("change", renderAlerts);
  $("f-since").addEventListener("change", renderAlerts);
  $("f-text").addEventListener("input", renderAlerts);
  $("handover").addEventListener("click", handover);
  $("hh-scan").addEventListener("click", scanHousehold);
  $("reload").addEventListener("click", () => loadAlerts().catch((e) => flash(problemText(e))));
  $("hh-form").addEventListener("submit", (e) => {
    e.preventDefault();
    openHousehold($("hh-code").value);
  });
  $("person-form").addEventListener("submit", (e) => {
    e.preventDefault();
    searchPersons($("person-q").value);
  });
  $("incident-form").addEventListener("submit", (e) => {
    e.preventDefault();
    openIncident($("incident-id").value);
  });
  $("incident-list").addEventListener("click", recentIncidents);
  applyLanguage();
  tick();
  setInterval(() => {
    tick();
    renderAlerts(); // the waiting-too-long marks move with the clock
  }, 15000);
  if (state.token) start();
});
