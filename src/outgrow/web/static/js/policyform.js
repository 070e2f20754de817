// The auto-migration policy form, laid out as the seed's (screenshot 2_auto_migration.png):
// ON switch; Utilization (CPU and Memory: upper/lower bound % with durations); Migrate Step
// (CPU/Memory step %, "calculate automatically"); plus evadeOOM and advanced keys.
// Also the VM policy (spot) block. Both produce the canonical bracket strings.
import { h, id } from "./dom.js";
import {
  defaultMigratePolicy,
  defaultVmPolicy,
  formatMigratePolicy,
  formatVmPolicy,
  parseMigratePolicy,
  parseVmPolicy,
} from "./policy.js";

function num(value, { min = 0, max = null, step = "any", label, name, field, width = null }) {
  return h("input", {
    type: "number",
    inputmode: "decimal",
    min,
    max,
    step,
    value: value === null || value === undefined ? "" : String(value),
    "aria-label": label,
    name,
    class: ["num", width && `w-${width}`],
    "data-policy": field,
    id: id("amp"),
  });
}

function unitInput(input, unit) {
  return h("div", { class: "input-group" }, input, h("span", { class: "input-suffix", "aria-hidden": "true" }, unit));
}

/**
 * policyForm(initialString, onChange) → {el, value() → canonical string}
 */
export function policyForm(initial, onChange) {
  const p = parseMigratePolicy(initial || "[]");
  const inputs = {};
  const changed = () => onChange && onChange();

  const toggle = h("input", { type: "checkbox", role: "switch", class: "switch-input", checked: !p.disable, id: id("amp-on") });
  const toggleLabel = h("span", { class: "switch-state" }, p.disable ? "OFF" : "ON");
  const sw = h(
    "label",
    { class: "switch", for: toggle.id },
    toggle,
    h("span", { class: "switch-track", "aria-hidden": "true" }, h("span", { class: "switch-thumb" })),
    toggleLabel,
    h("span", { class: "sr-only" }, " auto-migration"),
  );

  function row(res, bound, label) {
    const ratioKey = `${bound}BoundRatio`;
    const durKey = `${bound}BoundDuration`;
    const r = num(p[res][ratioKey], { min: 1, max: 100, label: `${res === "cpu" ? "CPU" : "Memory"} ${label} (%)`, field: `${res}.${ratioKey}` });
    const d = num(p[res][durKey], { min: 0, label: `${res === "cpu" ? "CPU" : "Memory"} ${label} duration (seconds)`, field: `${res}.${durKey}` });
    inputs[`${res}.${ratioKey}`] = r;
    inputs[`${res}.${durKey}`] = d;
    return h(
      "div",
      { class: "amp-row" },
      h("div", { class: "amp-cell", "data-field": `migratePolicy.${res}.${ratioKey}` }, h("label", { class: "amp-label", for: r.id }, label), unitInput(r, "%"), h("div", { class: "field-error", role: "alert" })),
      h("div", { class: "amp-cell", "data-field": `migratePolicy.${res}.${durKey}` }, h("label", { class: "amp-label", for: d.id }, "Duration"), unitInput(d, "s"), h("div", { class: "field-error", role: "alert" })),
    );
  }

  const cpuStep = num(p.cpu.step, { min: 1, max: 1000, label: "CPU step (%)", field: "cpu.step" });
  const memStep = num(p.mem.step, { min: 1, max: 1000, label: "Memory step (%)", field: "mem.step" });
  inputs["cpu.step"] = cpuStep;
  inputs["mem.step"] = memStep;
  const stepAuto = h("input", { type: "checkbox", checked: p.stepAuto, id: id("amp-auto") });
  const evade = h("input", { type: "checkbox", checked: p.evadeOOM, id: id("amp-oom") });

  const adv = {};
  const advInput = (key, label, unit, value, min = 0) => {
    const i = num(value, { min, label, field: key });
    adv[key] = i;
    return h("div", { class: "amp-cell", "data-field": `migratePolicy.${key}` }, h("label", { class: "amp-label", for: i.id }, label), unitInput(i, unit), h("div", { class: "field-error", role: "alert" }));
  };
  const advanced = h(
    "details",
    { class: "amp-advanced" },
    h("summary", "Advanced: prepare level, size limits, cooldown"),
    h(
      "div",
      { class: "amp-adv-grid" },
      advInput("mem.prepareRatio", "Memory prepare at", "%", p.mem.prepareRatio, 1),
      advInput("cpu.prepareRatio", "CPU prepare at", "%", p.cpu.prepareRatio, 1),
      advInput("mem.limit", "Memory limit", "GiB", p.mem.limit),
      advInput("cpu.limit", "CPU limit", "vCPU", p.cpu.limit),
      advInput("mem.lowerLimit", "Memory lower limit", "GiB", p.mem.lowerLimit),
      advInput("cpu.lowerLimit", "CPU lower limit", "vCPU", p.cpu.lowerLimit),
      advInput("cooldown", "Cooldown between moves", "s", p.cooldown),
    ),
    h("p", { class: "hint" }, "Empty prepare level: upper bound − 10. The next size is created ahead of time when usage reaches it, so the move is faster."),
  );

  const body = h(
    "div",
    { class: "amp-body" },
    h("h4", { class: "amp-h" }, "Utilization"),
    h("p", { class: "amp-text" }, "If the threshold for CPU or memory utilization is crossed and utilization remains elevated or low for a specified interval, the auto-migration will be triggered."),
    h("div", { class: "amp-group", role: "group", "aria-label": "CPU" }, h("div", { class: "amp-group-title" }, "CPU"), row("cpu", "upper", "Upper Bound Utilization"), row("cpu", "lower", "Lower Bound Utilization")),
    h("div", { class: "amp-group", role: "group", "aria-label": "Memory" }, h("div", { class: "amp-group-title" }, "Memory"), row("mem", "upper", "Upper Bound Utilization"), row("mem", "lower", "Lower Bound Utilization")),
    h("h4", { class: "amp-h" }, "Migrate Step"),
    h("p", { class: "amp-text" }, "Specify the percentage change in VM size (measured by vCPUs or memory) in one migrate step (increase or decrease)"),
    h(
      "div",
      { class: "amp-row amp-steps" },
      h("div", { class: "amp-cell", "data-field": "migratePolicy.cpu.step" }, h("label", { class: "amp-label", for: cpuStep.id }, "CPU Step"), unitInput(cpuStep, "%"), h("div", { class: "field-error", role: "alert" })),
      h("div", { class: "amp-cell", "data-field": "migratePolicy.mem.step" }, h("label", { class: "amp-label", for: memStep.id }, "Memory Step"), unitInput(memStep, "%"), h("div", { class: "field-error", role: "alert" })),
    ),
    h("label", { class: "check", for: stepAuto.id, "data-field": "migratePolicy.stepAuto" }, stepAuto, h("span", "Calculate Migrate Step automatically (override manual settings)")),
    advanced,
  );

  const el = h(
    "div",
    { class: "amp", "data-field": "migratePolicy migrate_policy" },
    h("div", { class: "amp-head" }, h("h3", { class: "amp-title" }, "Auto-Migration Policy"), sw),
    body,
    h(
      "label",
      { class: "check check-strong", for: evade.id, "data-field": "migratePolicy.evadeOOM" },
      evade,
      h(
        "span",
        h("strong", "evadeOOM"),
        " — when the job reaches its memory limit, move it to a bigger instance at once instead of letting it be killed (acts even when the policy is off).",
      ),
    ),
    h("div", { class: "field-error", role: "alert" }),
  );

  function sync() {
    toggleLabel.textContent = toggle.checked ? "ON" : "OFF";
    body.classList.toggle("is-off", !toggle.checked);
    body.querySelectorAll("input").forEach((i) => (i.disabled = !toggle.checked));
    cpuStep.disabled = memStep.disabled = !toggle.checked || stepAuto.checked;
  }
  el.addEventListener("input", () => {
    sync();
    changed();
  });
  el.addEventListener("change", () => {
    sync();
    changed();
  });
  sync();

  function value() {
    const out = defaultMigratePolicy();
    const read = (i, fallback) => (i.value.trim() === "" ? fallback : Number(i.value));
    for (const [key, i] of Object.entries(inputs)) {
      const [res, sub] = key.split(".");
      out[res][sub] = read(i, out[res][sub]);
    }
    for (const [key, i] of Object.entries(adv)) {
      if (key.includes(".")) {
        const [res, sub] = key.split(".");
        out[res][sub] = read(i, null);
      } else out[key] = read(i, out[key]);
    }
    out.stepAuto = stepAuto.checked;
    out.evadeOOM = evade.checked;
    out.disable = !toggle.checked;
    return formatMigratePolicy(out);
  }
  return { el, value };
}

export function vmPolicyForm(initial, onChange) {
  const v = parseVmPolicy(initial || "[]");
  const name = id("vm");
  const modes = [
    ["spotFirst", "Spot first", "Spot capacity, falling back to on-demand (cheapest)"],
    ["spotOnly", "Spot only", "Wait for spot capacity (retrying)"],
    ["onDemand", "On demand", "Never spot"],
  ];
  const radios = modes.map(([key, label, hint]) =>
    h(
      "label",
      { class: "radio-card" },
      h("input", { type: "radio", name, value: key, checked: v.mode === key }),
      h("span", { class: "radio-card-text" }, h("strong", label), h("span", { class: "hint" }, hint)),
    ),
  );
  const retry = h("input", { type: "number", min: 0, step: 1, value: String(v.retryLimit), class: "num", id: id("vm-rl") });
  const interval = h("input", { type: "number", min: 0, step: "any", value: String(v.retryInterval), class: "num", id: id("vm-ri") });
  const el = h(
    "div",
    { class: "vm", "data-field": "vmPolicy vm_policy" },
    h("div", { class: "radio-cards", role: "radiogroup", "aria-label": "Capacity" }, radios),
    h(
      "div",
      { class: "form-row" },
      h("div", { class: "field", "data-field": "vmPolicy.retryLimit" }, h("label", { class: "field-label", for: retry.id }, "Retry limit"), retry, h("div", { class: "field-error", role: "alert" })),
      h(
        "div",
        { class: "field", "data-field": "vmPolicy.retryInterval" },
        h("label", { class: "field-label", for: interval.id }, "Retry interval"),
        h("div", { class: "input-group" }, interval, h("span", { class: "input-suffix" }, "s")),
        h("div", { class: "field-error", role: "alert" }),
      ),
    ),
    h("div", { class: "field-error", role: "alert" }),
  );
  el.addEventListener("input", () => onChange && onChange());
  el.addEventListener("change", () => onChange && onChange());
  function value() {
    const mode = el.querySelector(`input[name="${name}"]:checked`)?.value || "spotFirst";
    const d = defaultVmPolicy();
    return formatVmPolicy({
      mode,
      retryLimit: retry.value.trim() === "" ? d.retryLimit : Number(retry.value),
      retryInterval: interval.value.trim() === "" ? d.retryInterval : Number(interval.value),
    });
  }
  return { el, value };
}
