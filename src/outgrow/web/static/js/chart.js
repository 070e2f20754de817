// A hand-written SVG time-series chart for WaveWatcher: lines (with breaks between
// instances), step lines (instance limit, policy thresholds), shaded state periods,
// vertical event markers with tooltips (hover, focus, click to pin) and a hover crosshair.
import { h, s, replace, id as uid } from "./dom.js";
import { fmtClock } from "./format.js";

const M = { top: 26, right: 18, bottom: 30, left: 68 };

const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400].map((x) => x * 1000);

export function niceLinear(max, target = 4) {
  if (!(max > 0)) return { step: 1, max: 1 };
  const raw = max / target;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((x) => x >= raw) || 10 * mag;
  return { step, max: Math.ceil(max / step - 1e-9) * step };
}

export function niceBytes(max, target = 4) {
  if (!(max > 0)) return { step: 1024 ** 2, max: 4 * 1024 ** 2 };
  const raw = max / target;
  const step = 2 ** Math.ceil(Math.log2(raw));
  // 2^n steps: 64 MiB, 128 MiB, 256 MiB, 512 MiB, 1 GiB... (fewer, rounder ticks)
  return { step, max: Math.ceil(max / step - 1e-9) * step };
}

function bisect(arr, t) {
  let lo = 0;
  let hi = arr.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (arr[mid] < t) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export class TimeChart {
  /**
   * opts: {title, yFormat(v), ticks(max) → {step,max}, height, legend: [{label, cls, kind}],
   *        ariaLabel, valueRows(t) → [[label, text, cls]] for the crosshair tooltip}
   */
  constructor(container, opts) {
    this.opts = { height: 250, ...opts };
    this.uid = uid("chart");
    this.data = null;
    this.pinned = null;
    this.hoverT = null;
    this.width = 0;
    this.legend = h("div", { class: "chart-legend" });
    this.svgWrap = h("div", { class: "chart-svg" });
    this.tip = h("div", { class: "chart-tip", role: "tooltip", id: `${this.uid}-tip`, hidden: true });
    this.root = h(
      "figure",
      { class: "chart", "aria-label": opts.ariaLabel || opts.title },
      h("figcaption", { class: "chart-head" }, h("h3", { class: "chart-title" }, opts.title), this.legend),
      h("div", { class: "chart-body" }, this.svgWrap, this.tip),
    );
    container.append(this.root);
    this.ro = new ResizeObserver(() => {
      const w = Math.floor(this.svgWrap.clientWidth);
      if (w && w !== this.width) {
        this.width = w;
        this.render();
      }
    });
    this.ro.observe(this.svgWrap);
    this.onKey = (ev) => {
      if (ev.key === "Escape" && this.pinned) {
        this.pinned = null;
        this.hideTip();
      }
    };
    document.addEventListener("keydown", this.onKey);
    this.drawLegend();
  }

  destroy() {
    this.ro.disconnect();
    document.removeEventListener("keydown", this.onKey);
  }

  drawLegend() {
    replace(
      this.legend,
      (this.opts.legend || []).map((l) =>
        h("span", { class: ["lg", `lg-${l.kind || "line"}`, l.cls] }, h("span", { class: "lg-swatch", "aria-hidden": "true" }), l.label),
      ),
    );
  }

  setData(data) {
    this.data = data;
    this.render();
  }

  x(t) {
    const { t0, t1 } = this.data;
    return M.left + ((t - t0) / Math.max(1, t1 - t0)) * this.plotW;
  }

  y(v) {
    return M.top + this.plotH - (v / this.yMax) * this.plotH;
  }

  render() {
    if (!this.data || !this.width) return;
    const d = this.data;
    const W = this.width;
    const H = this.opts.height;
    this.plotW = Math.max(10, W - M.left - M.right);
    this.plotH = H - M.top - M.bottom;
    let vmax = d.yMin || 0;
    for (const se of d.series) for (const seg of se.segments) for (const [, v] of seg) vmax = Math.max(vmax, v);
    for (const st of d.steps) for (const seg of st.segments) for (const [, v] of seg) vmax = Math.max(vmax, v);
    const ticks = (this.opts.ticks || niceLinear)(vmax * 1.04 || 1);
    this.yMax = ticks.max;

    const svg = s("svg", {
      class: "chart-svg-el",
      width: W,
      height: H,
      viewBox: `0 0 ${W} ${H}`,
      role: "img",
      "aria-label": this.opts.ariaLabel || this.opts.title,
    });
    const defs = s(
      "defs",
      null,
      s(
        "pattern",
        { id: `${this.uid}-hatch`, width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" },
        s("rect", { width: 6, height: 6, class: "band-float-bg" }),
        s("line", { x1: 0, y1: 0, x2: 0, y2: 6, class: "band-float-line" }),
      ),
      s("clipPath", { id: `${this.uid}-clip` }, s("rect", { x: M.left, y: M.top - 1, width: this.plotW, height: this.plotH + 2 })),
    );
    svg.append(defs);

    // shaded periods
    const bands = s("g", { class: "bands" });
    for (const b of d.bands) {
      const a = Math.max(d.t0, b.t0);
      const z = Math.min(d.t1, b.t1);
      if (z <= a) continue;
      bands.append(
        s("rect", {
          class: `band band-${b.kind}`,
          x: this.x(a),
          y: M.top,
          width: Math.max(1, this.x(z) - this.x(a)),
          height: this.plotH,
          fill: b.kind === "float" ? `url(#${this.uid}-hatch)` : null,
        }),
      );
    }
    svg.append(bands);

    // grid + y axis
    const grid = s("g", { class: "grid" });
    for (let v = 0; v <= this.yMax + 1e-9; v += ticks.step) {
      const yy = Math.round(this.y(v)) + 0.5;
      grid.append(s("line", { x1: M.left, x2: M.left + this.plotW, y1: yy, y2: yy, class: v === 0 ? "axis-line" : "grid-line" }));
      grid.append(s("text", { x: M.left - 8, y: yy + 4, class: "tick tick-y", "text-anchor": "end" }, this.opts.yFormat(v)));
    }
    // x axis
    const span = d.t1 - d.t0;
    const want = Math.max(2, Math.floor(this.plotW / 96));
    const step = TIME_STEPS.find((st) => span / st <= want) || 86400000 * Math.ceil(span / want / 86400000);
    const first = Math.ceil(d.t0 / step) * step;
    const withSec = step < 60000;
    for (let t = first; t <= d.t1; t += step) {
      const xx = Math.round(this.x(t)) + 0.5;
      grid.append(s("line", { x1: xx, x2: xx, y1: M.top + this.plotH, y2: M.top + this.plotH + 4, class: "axis-line" }));
      grid.append(s("text", { x: xx, y: M.top + this.plotH + 18, class: "tick tick-x", "text-anchor": "middle" }, fmtClock(t, withSec)));
    }
    svg.append(grid);

    const plot = s("g", { class: "plot", "clip-path": `url(#${this.uid}-clip)` });
    // step lines (limit, thresholds)
    for (const st of d.steps) {
      for (const seg of st.segments) {
        if (!seg.length) continue;
        let p = `M${this.x(seg[0][0]).toFixed(1)},${this.y(seg[0][1]).toFixed(1)}`;
        for (let i = 1; i < seg.length; i += 1) {
          p += `H${this.x(seg[i][0]).toFixed(1)}V${this.y(seg[i][1]).toFixed(1)}`;
        }
        plot.append(s("path", { d: p, class: `step ${st.cls}` }));
      }
    }
    // series (area for the first "area" series, then lines)
    for (const se of d.series) {
      for (const seg of se.segments) {
        if (!seg.length) continue;
        const pts = seg.map(([t, v]) => `${this.x(t).toFixed(1)},${this.y(v).toFixed(1)}`);
        if (se.area && seg.length > 1) {
          const base = this.y(0).toFixed(1);
          plot.append(s("path", { d: `M${this.x(seg[0][0]).toFixed(1)},${base}L${pts.join("L")}L${this.x(seg[seg.length - 1][0]).toFixed(1)},${base}Z`, class: `area ${se.cls}` }));
        }
        if (seg.length === 1) plot.append(s("circle", { cx: pts[0].split(",")[0], cy: pts[0].split(",")[1], r: 2, class: `dotpt ${se.cls}` }));
        else plot.append(s("path", { d: `M${pts.join("L")}`, class: `line ${se.cls}` }));
      }
    }
    svg.append(plot);

    // step labels (e.g. "limit 1 GiB") at the end of each limit segment (markers sit at
    // the start of a segment: the move that created the instance)
    for (const st of d.steps) {
      if (!st.label) continue;
      for (const seg of st.segments) {
        if (!seg.length) continue;
        const [tEnd, v] = seg[seg.length - 1];
        const text = st.label(v);
        const right = Math.min(this.x(tEnd), M.left + this.plotW) - 4;
        const left = Math.max(this.x(seg[0][0]), M.left);
        if (right - left < text.length * 6.6 + 10 || tEnd < d.t0) continue; // no room yet
        const yy = this.y(v) - 5;
        if (yy < M.top - 4) continue;
        svg.append(s("text", { x: right, y: yy, class: `step-label ${st.cls}`, "text-anchor": "end" }, text));
      }
    }

    // crosshair
    this.guide = s("g", { class: "guide", visibility: "hidden" });
    svg.append(this.guide);
    const hit = s("rect", { x: M.left, y: M.top, width: this.plotW, height: this.plotH, class: "hit" });
    hit.addEventListener("mousemove", (ev) => this.hover(ev));
    hit.addEventListener("mouseleave", () => {
      this.hoverT = null;
      this.guide.setAttribute("visibility", "hidden");
      if (!this.pinned && !this.markerHover) this.hideTip();
    });
    svg.append(hit);

    // markers
    const markers = s("g", { class: "markers" });
    for (const mk of d.markers) {
      if (mk.t < d.t0 || mk.t > d.t1) continue;
      const xx = Math.round(this.x(mk.t)) + 0.5;
      const g = s(
        "g",
        {
          class: ["marker", mk.cls || "", this.pinned === mk.id ? "pinned" : ""].join(" "),
          tabindex: 0,
          role: "button",
          "aria-label": mk.aria,
          "aria-describedby": `${this.uid}-tip`,
          "data-marker": mk.id,
        },
        s("line", { x1: xx, x2: xx, y1: M.top - 8, y2: M.top + this.plotH, class: "marker-line" }),
        s("line", { x1: xx, x2: xx, y1: M.top - 8, y2: M.top + this.plotH, class: "marker-hit" }),
        s("circle", { cx: xx, cy: M.top - 12, r: 8, class: "marker-handle" }),
        s("path", { d: `M${xx - 3.5},${M.top - 10.5}l3.5,-3.5l3.5,3.5M${xx},${M.top - 14}v7`, class: "marker-glyph" }),
      );
      const show = () => {
        this.markerHover = mk.id;
        this.showMarkerTip(mk, xx);
      };
      g.addEventListener("mouseenter", show);
      g.addEventListener("focus", show);
      g.addEventListener("mouseleave", () => {
        this.markerHover = null;
        if (this.pinned !== mk.id) this.hideTip();
        if (this.pinned && this.pinned !== mk.id) this.restorePinned();
      });
      g.addEventListener("blur", () => {
        this.markerHover = null;
        if (this.pinned !== mk.id) this.hideTip();
      });
      const toggle = () => {
        this.pinned = this.pinned === mk.id ? null : mk.id;
        markers.querySelectorAll(".marker").forEach((m) => m.classList.toggle("pinned", m.dataset.marker === this.pinned));
        if (this.pinned) this.showMarkerTip(mk, xx);
        else this.hideTip();
      };
      g.addEventListener("click", toggle);
      g.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          toggle();
        }
      });
      markers.append(g);
    }
    svg.append(markers);

    const hadFocus = this.svgWrap.contains(document.activeElement) ? document.activeElement.dataset?.marker : null;
    replace(this.svgWrap, svg);
    if (hadFocus) svg.querySelector(`[data-marker="${CSS.escape(hadFocus)}"]`)?.focus({ preventScroll: true });
    if (this.pinned) this.restorePinned();
    else if (this.markerHover) {
      const mk = d.markers.find((m) => m.id === this.markerHover);
      if (mk) this.showMarkerTip(mk, this.x(mk.t));
    } else if (this.hoverT !== null) this.drawGuide(this.hoverT);
  }

  restorePinned() {
    const mk = this.data.markers.find((m) => m.id === this.pinned);
    if (mk && mk.t >= this.data.t0 && mk.t <= this.data.t1) this.showMarkerTip(mk, this.x(mk.t));
    else {
      this.pinned = null;
      this.hideTip();
    }
  }

  hover(ev) {
    const rect = this.svgWrap.getBoundingClientRect();
    const px = ev.clientX - rect.left;
    const { t0, t1 } = this.data;
    const t = t0 + ((px - M.left) / this.plotW) * (t1 - t0);
    this.hoverT = t;
    this.drawGuide(t);
  }

  drawGuide(t) {
    const times = this.data.times || [];
    if (!times.length) return;
    const i = bisect(times, t);
    const cand = [times[Math.max(0, i - 1)], times[i]].filter((x) => x !== undefined);
    const near = cand.reduce((a, b) => (Math.abs(b - t) < Math.abs(a - t) ? b : a));
    const xx = this.x(near);
    if (xx < M.left - 1 || xx > M.left + this.plotW + 1) return;
    replace(this.guide, s("line", { x1: xx, x2: xx, y1: M.top, y2: M.top + this.plotH, class: "guide-line" }));
    const rows = this.opts.valueRows ? this.opts.valueRows(near) : [];
    for (const r of rows) {
      if (r.v === undefined || r.v === null || !r.cls) continue;
      this.guide.append(s("circle", { cx: xx, cy: this.y(r.v), r: 3.5, class: `guide-dot ${r.cls}` }));
    }
    this.guide.setAttribute("visibility", "visible");
    if (this.pinned || this.markerHover) return;
    replace(
      this.tip,
      h("div", { class: "tip-title" }, fmtClock(near)),
      h(
        "dl",
        { class: "tip-rows" },
        rows.map((r) => [h("dt", h("span", { class: ["tip-sw", r.cls] }), r.label), h("dd", r.text)]),
      ),
    );
    this.placeTip(xx, false);
  }

  showMarkerTip(mk, xx) {
    this.tip.classList.add("tip-marker");
    replace(this.tip, mk.tip());
    this.placeTip(xx, true);
    this.guide?.setAttribute("visibility", "hidden");
  }

  placeTip(xx, marker) {
    this.tip.classList.toggle("tip-marker", marker);
    this.tip.hidden = false;
    const tw = this.tip.offsetWidth;
    const W = this.width;
    let left = xx + 12;
    if (left + tw > W - 4) left = xx - tw - 12;
    this.tip.style.left = `${Math.max(4, left)}px`;
    this.tip.style.top = `${marker ? 6 : M.top + 6}px`;
  }

  hideTip() {
    this.tip.hidden = true;
  }
}
