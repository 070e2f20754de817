// The policies of a job in the seed's bracket syntax, mirrored from domain/policy.py so the
// console produces exactly the canonical strings the API stores (only non-default keys, in
// the canonical order, durations as "30s").

export const RES_KEYS = [
  ["upperBoundRatio", "ratio", 90],
  ["lowerBoundRatio", "ratio", 5],
  ["upperBoundDuration", "duration", 30],
  ["lowerBoundDuration", "duration", 300],
  ["step", "ratio", 50],
  ["limit", "size", null],
  ["lowerLimit", "size", null],
  ["prepareRatio", "ratio", null],
];
export const GLOBAL_KEYS = [
  ["stepAuto", "bool", false],
  ["evadeOOM", "bool", true],
  ["disable", "bool", false],
  ["cooldown", "duration", 120],
];
export const VM_MODES = ["spotFirst", "spotOnly", "onDemand"];

export function defaultMigratePolicy() {
  const res = () => Object.fromEntries(RES_KEYS.map(([k, , d]) => [k, d]));
  return { cpu: res(), mem: res(), ...Object.fromEntries(GLOBAL_KEYS.map(([k, , d]) => [k, d])) };
}

export function defaultVmPolicy() {
  return { mode: "spotFirst", retryLimit: 3, retryInterval: 600 };
}

/** Python's format_number: 90.0 → "90", 2.5 → "2.5". */
export function fmtNumber(x) {
  const n = Number(x);
  return Number.isInteger(n) ? String(n) : String(n);
}

function render(kind, value) {
  if (kind === "bool") return value ? "true" : "false";
  if (kind === "duration") return `${fmtNumber(value)}s`;
  return fmtNumber(value);
}

function same(a, b) {
  if (a === null || a === undefined) return b === null || b === undefined;
  if (b === null || b === undefined) return false;
  return typeof a === "boolean" ? a === b : Number(a) === Number(b);
}

/** The canonical "[k=v,...]" of a policy object (non-default keys only). */
export function formatMigratePolicy(p) {
  const out = [];
  for (const res of ["cpu", "mem"]) {
    for (const [k, kind, d] of RES_KEYS) {
      const v = p[res][k];
      if (!same(v, d) && v !== "" && !Number.isNaN(v)) out.push(`${res}.${k}=${render(kind, v)}`);
    }
  }
  for (const [k, kind, d] of GLOBAL_KEYS) {
    if (!same(p[k], d)) out.push(`${k}=${render(kind, p[k])}`);
  }
  return `[${out.join(",")}]`;
}

export function formatVmPolicy(v) {
  const out = [];
  if (v.mode !== "spotFirst") out.push(`${v.mode}=true`);
  if (Number(v.retryLimit) !== 3) out.push(`retryLimit=${fmtNumber(v.retryLimit)}`);
  if (Number(v.retryInterval) !== 600) out.push(`retryInterval=${fmtNumber(v.retryInterval)}s`);
  return `[${out.join(",")}]`;
}

function splitBracket(text) {
  const t = String(text || "").trim().replace(/^\[/, "").replace(/\]$/, "");
  return t
    .split(",")
    .map((x) => x.trim())
    .filter(Boolean)
    .map((x) => {
      const i = x.indexOf("=");
      return i < 0 ? [x, "true"] : [x.slice(0, i).trim(), x.slice(i + 1).trim()];
    });
}

function parseValue(kind, raw) {
  const r = String(raw).trim().toLowerCase();
  if (kind === "bool") return r === "true" || r === "1" || r === "yes" || r === "on";
  if (kind === "duration") {
    const m = r.match(/^(\d+(?:\.\d+)?)(s|m|h|d)?$/);
    if (!m) return Number(r);
    return Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[m[2] || "s"];
  }
  if (kind === "size") {
    const m = r.match(/^(\d+(?:\.\d+)?)\s*(g|gi|gb|gib|m|mi|mb|mib)?$/);
    if (!m) return Number(r);
    return m[2] && m[2].startsWith("m") ? Number(m[1]) / 1024 : Number(m[1]);
  }
  return Number(r.replace(/%$/, ""));
}

/** A stored policy string back into the form's object (for Modify, templates, clones). */
export function parseMigratePolicy(text) {
  const p = defaultMigratePolicy();
  for (const [key, raw] of splitBracket(text)) {
    const [res, sub] = key.includes(".") ? key.split(".", 2) : [null, key];
    if (res === "cpu" || res === "mem") {
      const spec = RES_KEYS.find(([k]) => k === sub);
      if (spec) p[res][sub] = parseValue(spec[1], raw);
    } else {
      const spec = GLOBAL_KEYS.find(([k]) => k === sub);
      if (spec) p[sub] = parseValue(spec[1], raw);
    }
  }
  return p;
}

export function parseVmPolicy(text) {
  const v = defaultVmPolicy();
  for (const [key, raw] of splitBracket(text)) {
    if (VM_MODES.includes(key) && parseValue("bool", raw)) v.mode = key;
    else if (key === "retryLimit") v.retryLimit = Number(raw);
    else if (key === "retryInterval") v.retryInterval = parseValue("duration", raw);
  }
  return v;
}

/** "90% for 30s" style summary used in cards and tooltips. */
export function describeMigratePolicy(text) {
  const p = parseMigratePolicy(text);
  if (p.disable) return `auto-migration off${p.evadeOOM ? ", evadeOOM on" : ""}`;
  const parts = [
    `mem ↑${fmtNumber(p.mem.upperBoundRatio)}%/${fmtNumber(p.mem.upperBoundDuration)}s ↓${fmtNumber(p.mem.lowerBoundRatio)}%/${fmtNumber(p.mem.lowerBoundDuration)}s`,
    `cpu ↑${fmtNumber(p.cpu.upperBoundRatio)}% ↓${fmtNumber(p.cpu.lowerBoundRatio)}%`,
    p.stepAuto ? "auto step" : `step ${fmtNumber(p.mem.step)}%`,
  ];
  if (p.evadeOOM) parts.push("evadeOOM");
  return parts.join(" · ");
}
