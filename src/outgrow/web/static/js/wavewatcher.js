// WaveWatcher: memory and CPU of a job over time across its instances, with the instance
// limits (step lines), the auto-migration thresholds (dashed), Executing/Floating periods
// (shaded) and every migration as a marker whose tooltip says why it moved.
import { enc, get } from "./api.js";
import { h, replace } from "./dom.js";
import { TimeChart, niceBytes, niceLinear } from "./chart.js";
import { fmtBytes, fmtClock, fmtDateTime, parseTime, trimNum } from "./format.js";
import { icon } from "./icons.js";

const RANGES = [
  { key: "5m", label: "5 min", s: 300 },
  { key: "15m", label: "15 min", s: 900 },
  { key: "1h", label: "1 h", s: 3600 },
  { key: "6h", label: "6 h", s: 21600 },
  { key: "24h", label: "24 h", s: 86400 },
  { key: "all", label: "All", s: null },
];

/** Why a job moved, as a short category for the tooltip chip. */
export function reasonKind(reason) {
  const r = String(reason || "");
  if (/^evadeOOM/i.test(r)) return { key: "oom", label: "evadeOOM" };
  if (/^manual/i.test(r)) return { key: "manual", label: "Manual" };
  if (/spot reclaim/i.test(r)) return { key: "spot", label: "Spot reclaim" };
  const mem = /(^|, )mem /.test(r);
  const cpu = /(^|, )cpu /.test(r);
  const dir = /≤/.test(r) ? "shrink" : "grow";
  if (mem && cpu) return { key: "both", label: `CPU + memory policy (${dir})` };
  if (mem) return { key: "mem", label: `Memory policy (${dir})` };
  if (cpu) return { key: "cpu", label: `CPU policy (${dir})` };
  return { key: "other", label: "Policy" };
}

function statePeriods(events, tEnd) {
  const st = events.filter((e) => e.type === "state" && e.to_state).map((e) => ({ t: parseTime(e.time), s: e.to_state }));
  st.sort((a, b) => a.t - b.t);
  const out = [];
  st.forEach((e, i) => {
    const end = i + 1 < st.length ? st[i + 1].t : tEnd;
    if (e.s === "Executing") out.push({ t0: e.t, t1: end, kind: "exec" });
    else if (e.s === "Floating") out.push({ t0: e.t, t1: end, kind: "float" });
  });
  return out;
}

/** Split points into runs (a new run on an instance change or a gap of > 10 s). */
function runs(points) {
  const out = [];
  let cur = null;
  for (const p of points) {
    const t = p.t * 1000;
    if (!cur || p.instance_id !== cur.instance || t - cur.last > 10000) {
      cur = { instance: p.instance_id, pts: [], last: t };
      out.push(cur);
    }
    cur.pts.push(p);
    cur.last = t;
  }
  return out;
}

function migrationTip(e) {
  const kind = reasonKind(e.reason);
  const timings = e.data?.timings || {};
  const rows = [
    ["From → to", `${e.from_type || "?"} → ${e.to_type || "?"}`],
    ["Downtime", e.downtime_s !== null && e.downtime_s !== undefined ? `${trimNum(e.downtime_s, 2)} s` : "—"],
    ["Checkpoint", e.checkpoint_bytes ? fmtBytes(e.checkpoint_bytes) : "—"],
  ];
  if (timings.dump_s !== undefined) {
    rows.push(["Dump · transfer · restore", `${trimNum(timings.dump_s, 2)} · ${trimNum(timings.transfer_s ?? 0, 2)} · ${trimNum(timings.restore_s ?? 0, 2)} s`]);
  }
  return [
    h("div", { class: "tip-title" }, h("span", { class: `reason-chip rk-${kind.key}` }, kind.label), h("span", { class: "tip-time" }, fmtDateTime(e.time))),
    h("p", { class: "tip-reason" }, e.reason),
    h(
      "dl",
      { class: "tip-rows" },
      rows.map(([k, v]) => [h("dt", k), h("dd", v)]),
    ),
  ];
}

export function renderWaveWatcher(panel, ctx, job) {
  let range = "all";
  let custom = null; // {from, to} ms
  let last = null;
  let jobNow = job;

  const rangeSeg = h("div", { class: "segmented segmented-sm", role: "radiogroup", "aria-label": "Time range" });
  const fromIn = h("input", { type: "datetime-local", step: 1, "aria-label": "From" });
  const toIn = h("input", { type: "datetime-local", step: 1, "aria-label": "To" });
  const applyBtn = h("button", { type: "button", class: "btn btn-secondary btn-sm", onclick: applyCustom }, "Apply");
  const customBox = h("div", { class: "range-custom" }, fromIn, h("span", { class: "arrow", "aria-hidden": "true" }, "→"), toIn, applyBtn);
  const live = h("span", { class: "live", title: "Updated every 2 s" }, h("span", { class: "live-dot", "aria-hidden": "true" }), "Live");
  const status = h("span", { class: "ww-status muted", "aria-live": "polite" });

  function drawRange() {
    replace(
      rangeSeg,
      RANGES.map((r) =>
        h(
          "button",
          {
            type: "button",
            role: "radio",
            class: "seg",
            "aria-checked": String(!custom && r.key === range),
            "data-range": r.key,
            onclick: () => {
              range = r.key;
              custom = null;
              drawRange();
              refresh();
            },
          },
          r.label,
        ),
      ),
    );
    live.hidden = Boolean(custom);
  }

  function toLocalInput(ms) {
    const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
    return d.toISOString().slice(0, 19);
  }

  function applyCustom() {
    const f = Date.parse(fromIn.value);
    const t = Date.parse(toIn.value);
    if (Number.isNaN(f) || Number.isNaN(t) || t <= f) {
      status.textContent = "Choose a start before the end.";
      return;
    }
    custom = { from: f, to: t };
    drawRange();
    refresh();
  }

  const legendArea = h(
    "div",
    { class: "ww-areas" },
    h("span", { class: "muted" }, "Area marking:"),
    h("span", { class: "lg lg-band band-exec-sw" }, h("span", { class: "lg-swatch" }), "Executing"),
    h("span", { class: "lg lg-band band-float-sw" }, h("span", { class: "lg-swatch" }), "Floating (migrating)"),
    h("span", { class: "lg lg-marker" }, h("span", { class: "lg-swatch" }), "Migration (hover for why)"),
  );
  const toolbar = h("div", { class: "ww-toolbar" }, legendArea, h("div", { class: "ww-range" }, rangeSeg, customBox, live));
  const memBox = h("div", { class: "card chart-card" });
  const cpuBox = h("div", { class: "card chart-card" });
  const policyLine = h("div", { class: "ww-policy" });
  const migList = h("div", { class: "ww-migrations" });
  replace(panel, h("div", { class: "ww" }, toolbar, policyLine, memBox, cpuBox, migList, status));

  const thrLegend = [
    { label: "Upper bound", cls: "thr-upper", kind: "dash" },
    { label: "Prepare", cls: "thr-prepare", kind: "dash" },
    { label: "Lower bound", cls: "thr-lower", kind: "dash" },
  ];
  const memChart = new TimeChart(memBox, {
    title: "Memory usage",
    ariaLabel: "Memory used, cache and swap over time with the instance limit and migration thresholds",
    yFormat: (v) => (v === 0 ? "0" : fmtBytes(v, 1)),
    ticks: (max) => niceBytes(max, 5),
    legend: [
      { label: "Memory used", cls: "s-used" },
      { label: "Buffer cache", cls: "s-cache" },
      { label: "Swap used", cls: "s-swap" },
      { label: "Instance limit", cls: "s-limit", kind: "step" },
      ...thrLegend,
    ],
    valueRows: (t) => valueRows(t, "mem"),
  });
  const cpuChart = new TimeChart(cpuBox, {
    title: "CPU usage",
    ariaLabel: "CPU used over time with the instance's vCPU quota and migration thresholds",
    yFormat: (v) => (v === 0 ? "0" : `${trimNum(v, 2)} vCPU`),
    ticks: (max) => niceLinear(max, 4),
    legend: [{ label: "CPU used", cls: "s-cpu" }, { label: "vCPU quota", cls: "s-limit", kind: "step" }, ...thrLegend],
    valueRows: (t) => valueRows(t, "cpu"),
  });
  ctx.onCleanup(() => {
    memChart.destroy();
    cpuChart.destroy();
  });

  let byTime = new Map();
  function valueRows(t, which) {
    const p = byTime.get(t);
    if (!p) return [];
    const th = last?.thresholds || {};
    if (which === "mem") {
      const lim = p.mem_limit_bytes;
      const pct = lim ? ` (${Math.round((p.mem_used_bytes / lim) * 100)}%)` : "";
      return [
        { label: "Used", text: fmtBytes(p.mem_used_bytes) + pct, v: p.mem_used_bytes, cls: "s-used" },
        { label: "Cache", text: fmtBytes(p.mem_cache_bytes), v: p.mem_cache_bytes, cls: "s-cache" },
        { label: "Swap", text: fmtBytes(p.mem_swap_bytes), v: p.mem_swap_bytes, cls: "s-swap" },
        { label: "Limit", text: lim ? fmtBytes(lim) : "—", v: null, cls: "s-limit" },
        ...(th.disable ? [] : [{ label: "Upper", text: `${trimNum(th.mem_upper_ratio)}%`, v: null, cls: "thr-upper" }]),
        { label: "Instance", text: p.instance_id, v: null, cls: "" },
      ];
    }
    const q = p.cpu_quota_vcpus;
    return [
      { label: "Used", text: `${trimNum(p.cpu_used_vcpus, 2)} vCPU${q ? ` (${Math.round((p.cpu_used_vcpus / q) * 100)}%)` : ""}`, v: p.cpu_used_vcpus, cls: "s-cpu" },
      { label: "Quota", text: q ? `${trimNum(q, 2)} vCPU` : "—", v: null, cls: "s-limit" },
      { label: "Instance", text: p.instance_id, v: null, cls: "" },
    ];
  }

  function window_() {
    const now = Date.now();
    if (custom) return { from: custom.from, to: custom.to, live: false };
    const r = RANGES.find((x) => x.key === range);
    if (r.s === null) {
      const start = parseTime(jobNow.submitted_at) ?? now - 300000;
      return { from: Math.min(start, now - 20000), to: now, live: true, all: true };
    }
    return { from: now - r.s * 1000, to: now, live: true };
  }

  async function refresh() {
    const w = window_();
    const spanS = (w.to - w.from) / 1000;
    const step = spanS > 900 ? Math.max(1, Math.round(spanS / 600)) : null;
    const q = new URLSearchParams();
    if (!w.all) q.set("from", (w.from / 1000).toFixed(3));
    if (!w.live) q.set("to", (w.to / 1000).toFixed(3));
    if (step) q.set("step", String(step));
    last = await get(`/jobs/${enc(jobNow.id)}/metrics${q.toString() ? `?${q}` : ""}`, { signal: ctx.signal });
    draw(w);
  }

  function draw(w) {
    const pts = last.points;
    const th = last.thresholds;
    const t0 = w.from;
    const t1 = w.to;
    byTime = new Map(pts.map((p) => [p.t * 1000, p]));
    const rs = runs(pts);
    const seg = (fn) => rs.map((r) => r.pts.map((p) => [p.t * 1000, fn(p)]));
    const stepSeg = (fn) => rs.map((r) => r.pts.filter((p) => fn(p) !== null && fn(p) !== undefined).map((p) => [p.t * 1000, fn(p)]));
    const on = !th.disable;
    const memSteps = [
      { cls: "s-limit", segments: stepSeg((p) => p.mem_limit_bytes), label: (v) => `limit ${fmtBytes(v)}` },
    ];
    const cpuSteps = [
      { cls: "s-limit", segments: stepSeg((p) => p.cpu_quota_vcpus), label: (v) => `quota ${trimNum(v, 2)} vCPU` },
    ];
    if (on) {
      const ratio = (key, field) => stepSeg((p) => (p[field] ? (p[field] * th[key]) / 100 : null));
      memSteps.push(
        { cls: "thr-upper", segments: ratio("mem_upper_ratio", "mem_limit_bytes") },
        { cls: "thr-prepare", segments: ratio("mem_prepare_ratio", "mem_limit_bytes") },
        { cls: "thr-lower", segments: ratio("mem_lower_ratio", "mem_limit_bytes") },
      );
      cpuSteps.push(
        { cls: "thr-upper", segments: ratio("cpu_upper_ratio", "cpu_quota_vcpus") },
        { cls: "thr-prepare", segments: ratio("cpu_prepare_ratio", "cpu_quota_vcpus") },
        { cls: "thr-lower", segments: ratio("cpu_lower_ratio", "cpu_quota_vcpus") },
      );
    }
    const bands = statePeriods(last.events, Date.now());
    const migrations = last.events.filter((e) => e.type === "migration");
    const markers = migrations.map((e) => {
      const kind = reasonKind(e.reason);
      return {
        id: `m${e.id}`,
        t: parseTime(e.time),
        cls: `rk-${kind.key}`,
        aria: `Migration at ${fmtClock(parseTime(e.time))}: ${e.from_type} to ${e.to_type}. ${e.reason}`,
        tip: () => migrationTip(e),
      };
    });
    const times = pts.map((p) => p.t * 1000);
    memChart.setData({
      t0,
      t1,
      times,
      bands,
      markers,
      steps: memSteps,
      series: [
        { cls: "s-cache", segments: seg((p) => p.mem_cache_bytes) },
        { cls: "s-swap", segments: seg((p) => p.mem_swap_bytes) },
        { cls: "s-used", segments: seg((p) => p.mem_used_bytes), area: true },
      ],
    });
    cpuChart.setData({
      t0,
      t1,
      times,
      bands,
      markers,
      steps: cpuSteps,
      series: [{ cls: "s-cpu", segments: seg((p) => p.cpu_used_vcpus), area: true }],
    });
    fromIn.value = toLocalInput(t0);
    toIn.value = toLocalInput(t1);
    replace(
      policyLine,
      icon("info", { size: 16 }),
      on
        ? h(
            "span",
            "Auto-migration: grow above ",
            h("strong", `${trimNum(th.mem_upper_ratio)}%`),
            " of memory or ",
            h("strong", `${trimNum(th.cpu_upper_ratio)}%`),
            " of CPU, pre-create the next size at ",
            h("strong", `${trimNum(th.mem_prepare_ratio)}%`),
            ", shrink below ",
            h("strong", `${trimNum(th.mem_lower_ratio)}%`),
            th.evade_oom ? "; evadeOOM moves the job at once when it reaches its memory limit." : ".",
          )
        : h("span", "Threshold auto-migration is off", th.evade_oom ? "; evadeOOM still moves the job when it reaches its memory limit." : "."),
      h("code", { class: "ww-policy-code", title: "The job's --migrate-policy" }, th.migrate_policy === "[]" ? "default policy" : th.migrate_policy),
    );
    drawMigrations(migrations);
    status.textContent = pts.length ? "" : "No samples in this range yet: the agent samples every second while the job runs.";
  }

  function drawMigrations(migs) {
    if (!migs.length) {
      replace(migList);
      return;
    }
    replace(
      migList,
      h("h3", { class: "section-title" }, `Migrations (${migs.length})`),
      h(
        "div",
        { class: "table-scroll card" },
        h(
          "table",
          { class: "table table-compact" },
          h("thead", h("tr", ["Time", "From → to", "Why", "Reason", "Downtime", "Checkpoint"].map((c) => h("th", { scope: "col" }, c)))),
          h(
            "tbody",
            [...migs].reverse().map((e) => {
              const k = reasonKind(e.reason);
              return h(
                "tr",
                h("td", { class: "nowrap" }, fmtDateTime(e.time)),
                h("td", { class: "mono nowrap" }, `${e.from_type} → ${e.to_type}`),
                h("td", h("span", { class: `reason-chip rk-${k.key}` }, k.label)),
                h("td", { class: "reason-cell" }, e.reason),
                h("td", { class: "col-num" }, e.downtime_s !== null && e.downtime_s !== undefined ? `${trimNum(e.downtime_s, 2)} s` : "—"),
                h("td", { class: "col-num" }, e.checkpoint_bytes ? fmtBytes(e.checkpoint_bytes) : "—"),
              );
            }),
          ),
        ),
      ),
    );
  }

  drawRange();
  ctx.every(2000, async () => {
    if (!panel.isConnected) return;
    await refresh();
  });
  return {
    update(j) {
      jobNow = j;
    },
  };
}
