// Submit a job: the seed's form (job content, instance preferences, auto-migration policy,
// network) with the equivalent `outgrow submit …` command beside it, updated live.
import { cached, enc, get, post } from "../api.js";
import { h, id, replace } from "../dom.js";
import { fmtDurationSpec, fmtGiB, fmtPrice, fmtVcpu, parseDurationSpec, trimNum } from "../format.js";
import { icon } from "../icons.js";
import { submitCommand } from "../cmdline.js";
import { policyForm, vmPolicyForm } from "../policyform.js";
import { parseVmPolicy } from "../policy.js";
import { clearFieldErrors, copyButton, errorBox, field, linkButton, showFieldError, skeleton, tabList, toast } from "../ui.js";
import { defaultSpec, JUPYTER_KINDS, pageHeader, uniqueName } from "../common.js";

function section(title, ...children) {
  return h(
    "details",
    { class: "section", open: true },
    h("summary", { class: "section-summary" }, icon("chevron", { size: 18, cls: "chev" }), h("span", title)),
    h("div", { class: "section-body" }, children),
  );
}

/** A list of rows with add/remove buttons. make(initial) → {el, value(), focus()} */
function listEditor({ items, make, addLabel, emptyText, onChange, fieldName }) {
  const rows = [];
  let ready = false;
  const list = h("div", { class: "rows" });
  const emptyEl = h("div", { class: "rows-empty muted" }, emptyText);
  function add(init, focus = false) {
    const r = make(init);
    const rm = h(
      "button",
      { type: "button", class: "btn btn-ghost btn-icon", "aria-label": "Remove", title: "Remove", onclick: () => remove(r) },
      icon("x", { size: 16 }),
    );
    r.row = h("div", { class: "row-item" }, r.el, rm);
    rows.push(r);
    list.append(r.row);
    sync();
    if (focus) r.focus();
    if (ready) onChange();
  }
  function remove(r) {
    rows.splice(rows.indexOf(r), 1);
    r.row.remove();
    sync();
    onChange();
  }
  function sync() {
    emptyEl.hidden = rows.length > 0;
  }
  items.forEach((i) => add(i));
  ready = true;
  const el = h(
    "div",
    { class: "field", "data-field": fieldName },
    list,
    emptyEl,
    h("button", { type: "button", class: "btn btn-ghost btn-sm add-row", onclick: () => add(undefined, true) }, icon("plus", { size: 15 }), h("span", addLabel)),
    h("div", { class: "field-error", role: "alert" }),
  );
  el.addEventListener("input", onChange);
  sync();
  return {
    el,
    values: () => rows.map((r) => r.value()).filter((v) => v !== null),
    clear: () => [...rows].forEach(remove),
    add,
    count: () => rows.length,
  };
}

export async function render(root, ctx) {
  document.title = "Submit job · outgrow";
  replace(root, h("div", { class: "page" }, pageHeader({ title: "Submit job", back: { href: "#/jobs", label: "Jobs" } }), skeleton(6)));

  let images;
  let types;
  let jobs;
  let base = null;
  let origin = null;
  try {
    [images, types, jobs] = await Promise.all([cached("/images"), cached("/instance-types", 300000), get("/jobs")]);
    if (ctx.query.template) {
      const t = await get(`/templates/${enc(ctx.query.template)}`);
      base = { ...t.spec };
      origin = `From template ${t.name}`;
    } else if (ctx.query.job) {
      const j = await get(`/jobs/${enc(ctx.query.job)}`);
      base = { ...j.spec };
      origin = `Copy of job ${j.name}`;
    }
  } catch (e) {
    if (e.name === "AbortError") return;
    replace(root, h("div", { class: "page" }, pageHeader({ title: "Submit job", back: { href: "#/jobs", label: "Jobs" } }), errorBox(e)));
    return;
  }
  const taken = jobs.map((j) => j.name);
  const img0 = images.find((i) => i.name === (base?.image || ctx.query.image)) || images.find((i) => i.name === "jupyter-lab") || images[0];
  if (!base) base = defaultSpec(img0);
  base.name = uniqueName(base.name, taken);

  // ---- job content -------------------------------------------------------------------
  const nameIn = h("input", { type: "text", value: base.name, autocomplete: "off", spellcheck: "false", maxlength: 63, name: "name" });
  const imageSel = h(
    "select",
    { name: "image" },
    h("optgroup", { label: "Built-in" }, images.filter((i) => i.builtin).map((i) => h("option", { value: i.name, selected: i.name === img0.name }, `${i.name} — ${i.kind}`))),
    images.some((i) => !i.builtin)
      ? h("optgroup", { label: "Your images" }, images.filter((i) => !i.builtin).map((i) => h("option", { value: i.name, selected: i.name === img0.name }, `${i.name} — ${i.kind}`)))
      : null,
  );
  const imageHint = h("span");
  const script = h("textarea", { class: "code", rows: 7, spellcheck: "false", name: "script", placeholder: "#!/bin/bash\n# your job" }, base.script || "");
  script.value = base.script || "";
  let scriptFile = null;
  let scriptLoaded = null;
  const fileIn = h("input", { type: "file", hidden: true, id: id("file"), accept: ".sh,.py,.txt,.bash,text/*", "aria-label": "Script file" });
  const fileName = h("span", { class: "file-name muted" });
  fileIn.addEventListener("change", async () => {
    const f = fileIn.files[0];
    if (!f) return;
    if (f.size > 512 * 1024) {
      toast("Script files are limited to 512 KiB", "error");
      return;
    }
    scriptLoaded = await f.text();
    script.value = scriptLoaded;
    scriptFile = f.name;
    fileName.textContent = f.name;
    update();
  });
  const scriptField = h(
    "div",
    { class: "field", "data-field": "script" },
    h(
      "div",
      { class: "field-label-row" },
      h("label", { class: "field-label", for: (script.id = id("script")) }, "Job script"),
      h("button", { type: "button", class: "btn btn-ghost btn-sm file-btn", onclick: () => fileIn.click() }, icon("upload", { size: 15 }), h("span", "Load file…")),
      fileIn,
      fileName,
    ),
    script,
    h("div", { class: "field-hint" }, "Required for python images: it is the job (a #! line picks the interpreter, else python). Jupyter images start their server on their own."),
    h("div", { class: "field-error", role: "alert" }),
  );

  // ---- instance preferences ----------------------------------------------------------
  const modeName = id("mode");
  const byType = Boolean(base.instance_type);
  const modeRes = h("input", { type: "radio", name: modeName, value: "res", checked: !byType });
  const modeType = h("input", { type: "radio", name: modeName, value: "type", checked: byType });
  const [c0, c1] = String(base.cpu || "1").split(":");
  const [m0, m1] = String(base.mem || "1").split(":");
  const numIn = (v, label) => h("input", { type: "number", min: 0.01, step: "any", inputmode: "decimal", value: v ?? "", "aria-label": label });
  const cpuMin = numIn(c0, "vCPU min");
  const cpuMax = numIn(c1, "vCPU max");
  const memMin = numIn(m0, "Memory min (GiB)");
  const memMax = numIn(m1, "Memory max (GiB)");
  const typeSel = h(
    "select",
    { name: "instance_type" },
    types.map((t) =>
      h(
        "option",
        { value: t.name, selected: t.name === (base.instance_type || "lc.small") },
        `${t.name} — ${fmtVcpu(t.vcpus)}, ${fmtGiB(t.memory_gib)} — ${fmtPrice(t.price_per_hour)} (spot ${fmtPrice(t.spot_price_per_hour)})`,
      ),
    ),
  );
  const resBox = h(
    "div",
    { class: "form-grid-4" },
    field({ label: "vCPU (min)", control: cpuMin, name: "cpu", required: true }),
    field({ label: "vCPU (max)", control: cpuMax, hint: "empty: no maximum" }),
    field({ label: "Memory (min GiB)", control: memMin, name: "mem", required: true }),
    field({ label: "Memory (max GiB)", control: memMax, hint: "auto-migration never grows past it" }),
  );
  const typeBox = field({ label: "Instance type", control: typeSel, name: "instance_type" });
  const fitHint = h("div", { class: "fit-hint", "aria-live": "polite" });
  const vm = vmPolicyForm(base.vm_policy, () => update());

  // ---- auto-migration policy -----------------------------------------------------------
  const amp = policyForm(base.migrate_policy, () => update());

  // ---- network & advanced ----------------------------------------------------------------
  const envEd = listEditor({
    items: Object.entries(base.env || {}),
    fieldName: "env",
    addLabel: "Add variable",
    emptyText: "No environment variables.",
    onChange: () => update(),
    make: (init = ["", ""]) => {
      const k = h("input", { type: "text", value: init[0], placeholder: "NAME", "aria-label": "Variable name", class: "mono", spellcheck: "false" });
      const v = h("input", { type: "text", value: init[1], placeholder: "value", "aria-label": "Variable value", class: "mono", spellcheck: "false" });
      return { el: h("div", { class: "pair" }, k, h("span", { class: "pair-sep", "aria-hidden": "true" }, "="), v), value: () => (k.value.trim() ? [k.value.trim(), v.value] : null), focus: () => k.focus() };
    },
  });
  let autoPublish = false;
  const pubEd = listEditor({
    items: (base.publish || []).map((p) => p.split(":")),
    fieldName: "publish",
    addLabel: "Add port",
    emptyText: "No published port.",
    onChange: () => {
      autoPublish = false;
      update();
    },
    make: (init = ["", ""]) => {
      const hp = h("input", { type: "number", min: 1, max: 65535, value: init[0], placeholder: "host", "aria-label": "Host port", class: "mono" });
      const jp = h("input", { type: "number", min: 1, max: 65535, value: init[1], placeholder: "job", "aria-label": "Job port", class: "mono" });
      hp.addEventListener("input", () => {
        if (!jp.dataset.touched) jp.value = hp.value;
      });
      jp.addEventListener("input", () => (jp.dataset.touched = "1"));
      return { el: h("div", { class: "pair" }, hp, h("span", { class: "pair-sep", "aria-hidden": "true" }, ":"), jp), value: () => (hp.value || jp.value ? `${hp.value || jp.value}:${jp.value || hp.value}` : null), focus: () => hp.focus() };
    },
  });
  const cidrEd = listEditor({
    items: base.allow_cidr || [],
    fieldName: "allow_cidr",
    addLabel: "Add CIDR",
    emptyText: "Nobody but the control plane (the stable URL works without any rule).",
    onChange: () => update(),
    make: (init = "") => {
      const c = h("input", { type: "text", value: init, placeholder: "203.0.113.0/24", "aria-label": "Allowed CIDR", class: "mono", spellcheck: "false" });
      return { el: h("div", { class: "pair" }, c), value: () => c.value.trim() || null, focus: () => c.focus() };
    },
  });
  const idleIn = h("input", {
    type: "text",
    value: base.idle_timeout_s !== null && base.idle_timeout_s !== undefined ? fmtDurationSpec(base.idle_timeout_s) : "",
    placeholder: "2h",
    spellcheck: "false",
    class: "mono",
  });

  // ---- command panel ---------------------------------------------------------------------
  let cmdTab = "cli";
  const cmdPre = h("pre", { class: "cmd", "data-testid": "command", tabindex: "0", "aria-label": "Generated command line" });
  const cmdTabs = h("div");
  const copy = copyButton(() => cmdPre.textContent, { kind: "on-dark", label: "Copy", attrs: { "data-testid": "copy-command" } });
  const drawCmdTabs = () =>
    replace(
      cmdTabs,
      tabList(
        [
          { key: "cli", label: "Command line" },
          { key: "api", label: "API request" },
        ],
        cmdTab,
        (k) => {
          cmdTab = k;
          drawCmdTabs();
          update();
        },
        { label: "Command format", idPrefix: "cmdtab" },
      ),
    );
  drawCmdTabs();
  const formErr = h("div", { class: "form-error", role: "alert", hidden: true });
  const submitBtn = h("button", { type: "submit", class: "btn btn-primary", "data-testid": "submit-job" }, icon("rocket", { size: 17 }), h("span", "Submit"));

  function currentImage() {
    return images.find((i) => i.name === imageSel.value);
  }

  function numStr(input) {
    const t = input.value.trim();
    if (t === "") return "";
    const n = Number(t);
    return Number.isFinite(n) ? trimNum(n, 6) : t;
  }

  function buildSpec() {
    const spec = { name: nameIn.value.trim(), image: imageSel.value };
    let s = script.value.replace(/\r\n/g, "\n");
    if (s.trim() && !s.endsWith("\n")) s += "\n"; // what a file (or here-document) holds
    spec.script = s.trim() ? s : "";
    if (modeType.checked) spec.instance_type = typeSel.value;
    else {
      const lo = numStr(cpuMin) || "1";
      const hi = numStr(cpuMax);
      spec.cpu = hi ? `${lo}:${hi}` : lo;
      const mlo = numStr(memMin) || "1";
      const mhi = numStr(memMax);
      spec.mem = mhi ? `${mlo}:${mhi}` : mlo;
    }
    spec.migrate_policy = amp.value();
    spec.vm_policy = vm.value();
    spec.env = Object.fromEntries(envEd.values());
    spec.publish = pubEd.values();
    spec.allow_cidr = cidrEd.values();
    const idle = idleIn.value.trim();
    if (idle) {
      const secs = parseDurationSpec(idle);
      spec.idle_timeout_s = secs === null ? idle : secs;
    }
    return spec;
  }

  function fitText() {
    if (modeType.checked) {
      const t = types.find((x) => x.name === typeSel.value);
      return t ? [t, null] : [null, "unknown type"];
    }
    const n = (i) => (i.value.trim() === "" ? null : Number(i.value));
    const cmin = n(cpuMin) ?? 1;
    const mmin = n(memMin) ?? 1;
    const cmax = n(cpuMax);
    const mmax = n(memMax);
    const fit = types
      .filter((t) => t.vcpus >= cmin - 1e-9 && t.memory_gib >= mmin - 1e-9 && (cmax === null || t.vcpus <= cmax + 1e-9) && (mmax === null || t.memory_gib <= mmax + 1e-9))
      .sort((a, b) => a.price_per_hour - b.price_per_hour);
    return fit.length ? [fit[0], null] : [null, `No instance type has ${trimNum(cmin)} vCPU and ${fmtGiB(mmin)} within these ranges.`];
  }

  function update() {
    resBox.hidden = modeType.checked;
    typeBox.hidden = !modeType.checked;
    if (scriptFile && script.value !== scriptLoaded) {
      scriptFile = null;
      fileName.textContent = "";
    }
    const img = currentImage();
    replace(imageHint, img ? img.description : "");
    const [t, problem] = fitText();
    const spot = parseVmPolicy(vm.value()).mode !== "onDemand";
    replace(
      fitHint,
      t
        ? [icon("cpu", { size: 16 }), h("span", "Starts on ", h("strong", t.name), ` — ${fmtVcpu(t.vcpus)}, ${fmtGiB(t.memory_gib)} · ${fmtPrice(spot ? t.spot_price_per_hour : t.price_per_hour)}${spot ? " spot" : ""}`)]
        : [icon("alert", { size: 16 }), h("span", problem)],
    );
    fitHint.classList.toggle("warn", !t);
    const spec = buildSpec();
    if (cmdTab === "cli") cmdPre.textContent = submitCommand(spec, { scriptFile }).text;
    else {
      cmdPre.textContent = `curl -X POST ${location.origin}/api/v1/jobs \\\n  -H "Authorization: Bearer $OUTGROW_TOKEN" \\\n  -H "Content-Type: application/json" \\\n  -d @- <<'EOF'\n${JSON.stringify(spec, null, 2)}\nEOF`;
    }
  }

  let lastKind = img0.kind;
  imageSel.addEventListener("change", () => {
    const img = currentImage();
    const wasJupyter = JUPYTER_KINDS.has(lastKind);
    const isJupyter = JUPYTER_KINDS.has(img.kind);
    if (isJupyter && pubEd.count() === 0) {
      const p = img.default_port || 8888;
      pubEd.add([String(p), String(p)]);
      autoPublish = true;
    } else if (!isJupyter && wasJupyter && autoPublish) {
      pubEd.clear();
      autoPublish = false;
    }
    lastKind = img.kind;
    update();
  });
  if (JUPYTER_KINDS.has(img0.kind) && !ctx.query.template && !ctx.query.job) autoPublish = true;

  const form = h(
    "form",
    { class: "submit-form", novalidate: true },
    formErr,
    section(
      "Job content",
      h("div", { class: "form-grid-2" }, field({ label: "Name", control: nameIn, name: "name", required: true }), field({ label: "Image", control: imageSel, name: "image", required: true, hint: imageHint })),
      h("p", { class: "field-hint inline-link" }, "Images come from the ", h("a", { href: "#/library" }, "App Library"), "."),
      scriptField,
    ),
    section(
      "Instance preferences",
      h(
        "div",
        { class: "radio-inline", role: "radiogroup", "aria-label": "Size by" },
        h("label", { class: "check" }, modeRes, h("span", "CPU and memory")),
        h("label", { class: "check" }, modeType, h("span", "Instance type")),
      ),
      resBox,
      typeBox,
      fitHint,
      h("h4", { class: "sub-h" }, "Capacity (VM policy)"),
      vm.el,
    ),
    section("Auto-migration policy", amp.el),
    section(
      "Advanced / network",
      h(
        "div",
        { class: "form-grid-2" },
        h("div", h("div", { class: "field-label" }, "Environment variables"), envEd.el),
        h("div", h("div", { class: "field-label" }, "Publish ports (host : job)"), pubEd.el, h("p", { class: "field-hint" }, "Jupyter images publish 8888:8888. Users normally open the job's stable URL instead.")),
      ),
      h(
        "div",
        { class: "form-grid-2" },
        h("div", h("div", { class: "field-label" }, "Allowed source ranges (security group)"), cidrEd.el),
        field({ label: "Idle timeout", control: idleIn, name: "idle_timeout_s", hint: "Jupyter jobs are suspended (no cost) after this long idle: 30m, 2h, 1d. Empty: image default (2h); 0: never." }),
      ),
    ),
  );

  const panel = h(
    "aside",
    { class: "cmd-panel", "aria-label": "Equivalent command" },
    h("div", { class: "cmd-head" }, h("h2", "Generated command line"), copy),
    cmdTabs,
    cmdPre,
    h("p", { class: "cmd-note" }, "The same job from a terminal. Log in once with ", h("code", "outgrow login"), "."),
  );
  const actions = h(
    "div",
    { class: "form-actions" },
    linkButton("Cancel", "#/jobs", { kind: "ghost" }),
    submitBtn,
  );
  const layout = h("div", { class: "submit-layout" }, h("div", { class: "submit-main card" }, form, actions), panel);
  replace(
    root,
    h(
      "div",
      { class: "page" },
      pageHeader({ title: "Submit job", subtitle: origin, back: { href: "#/jobs", label: "Jobs" } }),
      layout,
    ),
  );
  form.addEventListener("input", update);
  form.addEventListener("change", update);

  async function doSubmit(ev) {
    ev?.preventDefault();
    clearFieldErrors(layout);
    const spec = buildSpec();
    if (!spec.name) return showFieldError(layout, { field: "name", message: "A job needs a name." }, formErr);
    if (typeof spec.idle_timeout_s === "string") {
      return showFieldError(layout, { field: "idle_timeout_s", message: "Use a duration such as 30m, 2h or 1d (0: never)." }, formErr);
    }
    submitBtn.disabled = true;
    try {
      const job = await post("/jobs", spec);
      toast(`Job ${job.name} submitted`, "success");
      ctx.navigate(`#/jobs/${enc(job.id)}`);
    } catch (e) {
      const f = e.field === "job" ? "name" : e.field;
      showFieldError(layout, { field: f || (/name/.test(e.message) && e.status === 409 ? "name" : ""), message: e.message }, formErr);
    } finally {
      submitBtn.disabled = false;
    }
  }
  form.addEventListener("submit", doSubmit);
  submitBtn.addEventListener("click", doSubmit);
  update();
}
