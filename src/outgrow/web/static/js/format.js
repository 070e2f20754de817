// Formatting of sizes, durations, times and money, the same everywhere in the console.

const pad = (n) => String(n).padStart(2, "0");

export function parseTime(value) {
  if (value === null || value === undefined) return null;
  if (typeof value === "number") return value * 1000; // unix seconds
  const t = Date.parse(value);
  return Number.isNaN(t) ? null : t;
}

/** 2026-06-29 18:45:48 (local time) */
export function fmtDateTime(value) {
  const t = parseTime(value);
  if (t === null) return "—";
  const d = new Date(t);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${fmtClock(t)}`;
}

export function fmtClock(ms, seconds = true) {
  const d = new Date(ms);
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  return seconds ? `${hm}:${pad(d.getSeconds())}` : hm;
}

/** 5m50s, 2h03m, 3d04h, 12s */
export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${pad(s % 60)}s`;
  const hr = Math.floor(m / 60);
  if (hr < 24) return `${hr}h${pad(m % 60)}m`;
  return `${Math.floor(hr / 24)}d${pad(hr % 24)}h`;
}

/** "3 min ago" */
export function fmtAgo(value, now = Date.now()) {
  const t = parseTime(value);
  if (t === null) return "—";
  const s = Math.round((now - t) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** 954 MB, 3.7 GB — binary units, labelled as the seed does (GB), with GiB precision. */
export function fmtBytes(n, digits = 1) {
  if (n === null || n === undefined || !Number.isFinite(n)) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Math.abs(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  const d = i === 0 ? 0 : v >= 100 ? 0 : digits;
  return `${n < 0 ? "-" : ""}${v.toFixed(d)} ${units[i]}`;
}

/** 2 GiB / 512 MiB for an instance size given in GiB */
export function fmtGiB(gib) {
  if (gib === null || gib === undefined) return "—";
  if (gib < 1) return `${Math.round(gib * 1024)} MiB`;
  return `${trimNum(gib)} GiB`;
}

export function fmtVcpu(v) {
  if (v === null || v === undefined) return "—";
  return `${trimNum(v)} vCPU`;
}

export function trimNum(x, digits = 2) {
  return String(Number(Number(x).toFixed(digits)));
}

/** $0.0016 — small costs keep 4 significant decimals */
export function fmtCost(usd) {
  if (usd === null || usd === undefined) return "—";
  if (usd === 0) return "$0.00";
  if (usd < 0.01) return `$${usd.toFixed(4)}`;
  if (usd < 1) return `$${usd.toFixed(3)}`;
  return `$${usd.toFixed(2)}`;
}

export function fmtPrice(perHour) {
  return `${fmtCost(perHour)}/h`;
}

/** 30s, 5m, 2h, 1h30m for seconds (the CLI's --idle-timeout spelling) */
export function fmtDurationSpec(seconds) {
  if (!Number.isFinite(seconds)) return "";
  if (seconds === 0) return "0";
  if (!Number.isInteger(seconds)) return `${seconds}s`;
  const units = [
    ["d", 86400],
    ["h", 3600],
    ["m", 60],
    ["s", 1],
  ];
  let rest = seconds;
  let out = "";
  for (const [u, n] of units) {
    if (rest >= n) {
      out += `${Math.floor(rest / n)}${u}`;
      rest %= n;
    }
  }
  return out;
}

/** Parse 30s, 5m, 2h, 1d, 1h30m or bare seconds; null if invalid. */
export function parseDurationSpec(text) {
  const t = String(text).trim().toLowerCase();
  if (t === "") return null;
  if (/^\d+(\.\d+)?$/.test(t)) return Number(t);
  const m = t.match(/^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$/);
  if (!m || !m.slice(1).some(Boolean)) return null;
  const [d, hr, mi, se] = m.slice(1).map((x) => Number(x || 0));
  return d * 86400 + hr * 3600 + mi * 60 + se;
}

export function plural(n, word, many = `${word}s`) {
  return `${n} ${n === 1 ? word : many}`;
}
