// Job details: status, actions (each confirmed, disabled when the state forbids it),
// summary, and the tabs Instances, WaveWatcher, Events, Logs, Connect, Security group.
import { ApiError, cached, enc, get, patch, post } from "../api.js";
import { h, id, replace, swap } from "../dom.js";
import { fmtAgo, fmtBytes, fmtCost, fmtDateTime, fmtDuration, fmtDurationSpec, fmtGiB, fmtPrice, fmtVcpu, parseDurationSpec, parseTime, trimNum } from "../format.js";
import { icon } from "../icons.js";
import { badge, stateInfo, TERMINAL } from "../states.js";
import { policyForm, vmPolicyForm } from "../policyform.js";
import { shq } from "../cmdline.js";
import { renderWaveWatcher, reasonKind } from "../wavewatcher.js";
import { button, clearFieldErrors, confirm, copyButton, dialog, empty, errorBox, field, kv, linkButton, showFieldError, skeleton, tabList, toast } from "../ui.js";
import { imagesByName, jobDuration, JUPYTER_KINDS, openHref, pageHeader, stableUrl, uniqueName } from "../common.js";

const TABS = [
  { key: "instances", label: "Instances", ic: "box" },
  { key: "wavewatcher", label: "WaveWatcher", ic: "wave" },
  { key: "events", label: "Events", ic: "list" },
  { key: "logs", label: "Logs", ic: "terminal" },
  { key: "connect", label: "Connect", ic: "open" },
  { key: "security", label: "Security group", ic: "shield" },
];

function tabScope(ctx) {
  const stops = [];
  const cleanups = [];
  return {
    signal: ctx.signal,
    every: (ms, fn) => {
      const stop = ctx.every(ms, fn);
      stops.push(stop);
      return stop;
    },
    onCleanup: (fn) => cleanups.push(fn),
    dispose() {
      stops.forEach((s) => s());
      cleanups.forEach((fn) => fn());
    },
  };
}

export async function render(root, ctx) {
  const ref = ctx.params.id;
  replace(root, h("div", { class: "page" }, pageHeader({ title: "Job", back: { href: "#/jobs", label: "Jobs" } }), skeleton(5)));
  let job;
  let images;
  try {
    [job, images] = await Promise.all([get(`/jobs/${enc(ref)}`, { signal: ctx.signal }), imagesByName()]);
  } catch (e) {
    if (e.name === "AbortError") return;
    replace(
      root,
      h(
        "div",
        { class: "page" },
        pageHeader({ title: "Job", back: { href: "#/jobs", label: "Jobs" } }),
        e instanceof ApiError && e.status === 404 ? empty("No such job", `There is no job "${ref}" (or it is not yours).`, linkButton("All jobs", "#/jobs")) : errorBox(e, () => ctx.navigate(location.hash)),
      ),
    );
    return;
  }
  const kind = images.get(job.image)?.kind || "";
  const isJupyter = JUPYTER_KINDS.has(kind);
  const tabs = TABS.filter((t) => t.key !== "connect" || kind === "jupyter-server");
  let tab = tabs.some((t) => t.key === ctx.params.tab) ? ctx.params.tab : kind === "python" ? "logs" : "instances";
  document.title = `${job.name} · outgrow`;

  // ---- header --------------------------------------------------------------------------
  const badgeSlot = h("span", { class: "badge-slot" });
  const reason = h("span", { class: "status-reason" });
  const statusLine = h("div", { class: "status-line", "aria-live": "polite" }, h("span", { class: "dot", "aria-hidden": "true" }), reason);
  // JupyterLab opens in a new tab; a headless Jupyter Server has no page: "Connect" shows how.
  const openBtn =
    kind === "jupyter-server"
      ? linkButton("Connect", `#/jobs/${enc(job.id)}/connect`, { kind: "primary", ic: "terminal", attrs: { "data-action": "open" } })
      : linkButton("Open", openHref(job, kind), { kind: "primary", ic: "open", external: true, attrs: { "data-action": "open" } });
  const btn = (label, ic, action, onclick, kind2 = "secondary") => button(label, { ic, kind: kind2, onclick, attrs: { "data-action": action } });
  const migrateBtn = btn("Migrate", "migrate", "migrate", () => migrateDialog());
  const modifyBtn = btn("Modify", "modify", "modify", () => modifyDialog());
  const suspendBtn = btn("Suspend", "pause", "suspend", () => simple("suspend"));
  const resumeBtn = btn("Resume", "play", "resume", () => simple("resume"));
  const restartBtn = btn("Restart", "restart", "restart", () => simple("restart"));
  const cancelBtn = btn("Cancel", "cancel", "cancel", () => simple("cancel"), "danger-soft");
  const refreshBtn = button("", { ic: "refresh", kind: "ghost", attrs: { "aria-label": "Refresh", title: "Refresh" }, onclick: () => refresh() });
  const more = h(
    "details",
    { class: "menu" },
    h("summary", { class: "btn btn-ghost", "aria-label": "More actions" }, h("span", "More"), icon("chevron", { size: 16 })),
    h(
      "div",
      { class: "menu-list", role: "menu" },
      h("button", { type: "button", role: "menuitem", class: "menu-item", "data-action": "template", onclick: () => templateDialog() }, icon("save", { size: 16 }), "Save as template"),
      h("a", { role: "menuitem", class: "menu-item", href: `#/submit?job=${enc(job.id)}`, "data-action": "clone" }, icon("clone", { size: 16 }), "Submit a copy…"),
    ),
  );
  more.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") {
      more.open = false;
      more.querySelector("summary").focus();
    }
  });
  document.addEventListener("click", closeMenu);
  ctx.onCleanup(() => document.removeEventListener("click", closeMenu));
  function closeMenu(ev) {
    if (more.open && !more.contains(ev.target)) more.open = false;
  }
  const actionsBar = h("div", { class: "job-actions" }, refreshBtn, isJupyter ? openBtn : null, migrateBtn, modifyBtn, suspendBtn, resumeBtn, restartBtn, cancelBtn, more);
  const imageLine = h("div", { class: "job-image" }, icon("box", { size: 15 }), h("a", { href: "#/library" }, job.image), kind && kind !== job.image ? h("span", { class: "muted" }, ` · ${kind}`) : null);
  const head = pageHeader({
    title: job.name,
    titleExtra: badgeSlot,
    subtitle: h("div", { class: "job-sub" }, imageLine),
    back: { href: "#/jobs", label: "Jobs" },
    actions: [actionsBar],
  });

  // ---- summary -----------------------------------------------------------------------
  const summary = h("div", { class: "summary card" });
  const urlBox = h("div", { class: "url-box" });
  const tabsSlot = h("div", { class: "tabs-slot" });
  const panel = h("div", { class: "tab-panel", id: "jobtab-panel", role: "tabpanel", tabindex: "0" });
  replace(root, h("div", { class: "page job-page" }, head, statusLine, summary, urlBox, tabsSlot, panel));

  function setDisabled(b, action, why) {
    const ok = job.actions.includes(action);
    b.disabled = !ok;
    b.title = ok ? why : `Not possible while ${job.status}`;
  }

  function drawHeader() {
    swap(badgeSlot, badge(job.status, { large: true }));
    const info = stateInfo(job.status);
    const why = `${job.status_reason || info.text}${job.exit_code !== null && job.exit_code !== undefined ? ` (exit ${job.exit_code})` : ""}`;
    reason.textContent = why;
    statusLine.className = `status-line tone-${info.tone}`;
    setDisabled(migrateBtn, "migrate", "Move the running job to another instance type now");
    setDisabled(modifyBtn, "modify", "Change the auto-migration and capacity policies");
    setDisabled(suspendBtn, "suspend", "Checkpoint the job and release its instance");
    setDisabled(resumeBtn, "resume", "Restore the job on a new instance");
    setDisabled(restartBtn, "restart", "Start a new run from the same spec");
    setDisabled(cancelBtn, "cancel", "Stop the job and release its instance");
    const suspendedish = ["Suspended", "Resuming"].includes(job.status);
    suspendBtn.hidden = suspendedish;
    resumeBtn.hidden = !suspendedish;
    restartBtn.hidden = !TERMINAL.has(job.status);
    cancelBtn.hidden = TERMINAL.has(job.status);
    const canOpen = job.actions.includes("open");
    openBtn.classList.toggle("disabled", !canOpen);
    openBtn.setAttribute("aria-disabled", String(!canOpen));
    openBtn.tabIndex = canOpen ? 0 : -1;
    openBtn.title = canOpen ? (kind === "jupyter-server" ? "How to use this server from your JupyterLab" : "Open JupyterLab at the job's stable URL") : `Available while Executing (now ${job.status})`;
  }
  openBtn.addEventListener("click", (ev) => {
    if (openBtn.getAttribute("aria-disabled") === "true") ev.preventDefault();
    else if (kind === "jupyter-server") {
      ev.preventDefault();
      selectTab("connect");
    }
  });

  function drawSummary() {
    const inst = job.instance;
    const host = inst
      ? h("span", h("span", { class: "mono" }, inst.address || "—"), h("span", { class: "kv-sub" }, `${inst.type} · ${fmtVcpu(inst.vcpus)} · ${fmtGiB(inst.memory_gib)} · ${inst.spot ? "spot" : "on-demand"}`))
      : h("span", { class: "muted" }, job.status === "Suspended" ? "none (suspended)" : "—");
    swap(
      summary,
      kv("ID", h("span", { class: "id-with-copy" }, h("span", { class: "mono" }, job.id), copyButton(job.id, { label: "", attrs: { "aria-label": "Copy job id", "data-key": "copy-id" } }))),
      kv("Instance", host, { cls: "kv-wide" }),
      kv("Submitted", h("span", { title: fmtAgo(job.submitted_at) }, fmtDateTime(job.submitted_at))),
      kv("Duration", fmtDuration(jobDuration(job))),
      kv("Cost", h("span", fmtCost(job.cost_usd), inst && !inst.ended_at ? h("span", { class: "kv-sub" }, `${fmtPrice(inst.price_per_hour)} now`) : null)),
      kv("Run", String(job.run)),
      kv("Snapshots", job.checkpoint_interval_s ? `every ${fmtDurationSpec(job.checkpoint_interval_s)}` : "off"),
    );
    if (isJupyter) {
      const url = kind === "jupyter-lab" ? stableUrl(job, "lab") : stableUrl(job);
      const live = job.actions.includes("open");
      swap(
        urlBox,
        h(
          "div",
          { class: ["url-card", !live && "off"] },
          icon("open", { size: 16 }),
          h("span", { class: "url-label" }, "Stable URL"),
          h("a", { class: "mono url", href: url, target: "_blank", rel: "noopener" }, url),
          copyButton(url, { attrs: { "data-key": "copy-url" } }),
          h("span", { class: "muted url-note" }, live ? "stays the same when the job moves" : `reachable while the job is Executing (now ${job.status})`),
        ),
      );
    }
  }

  const counts = () => ({ instances: job.instances.length, events: job.events.length });
  function drawTabs() {
    const c = counts();
    swap(
      tabsSlot,
      tabList(
        tabs.map((t) => ({ ...t, count: c[t.key] })),
        tab,
        (k) => selectTab(k),
        { label: "Job details", idPrefix: "jobtab" },
      ),
    );
  }

  // ---- tabs --------------------------------------------------------------------------
  let scope = null;
  let current = null; // {update(job)}
  function selectTab(k) {
    if (k === tab && current) return;
    tab = k;
    history.replaceState(null, "", `#/jobs/${enc(job.id)}/${k}`);
    drawTabs();
    tabsSlot.querySelector(`[data-tab="${k}"]`)?.focus({ preventScroll: true });
    openTab();
  }
  function openTab() {
    if (scope) scope.dispose();
    scope = tabScope(ctx);
    panel.setAttribute("aria-labelledby", `jobtab-${tab}`);
    replace(panel);
    const fns = { instances: instancesTab, wavewatcher: wwTab, events: eventsTab, logs: logsTab, connect: connectTab, security: securityTab };
    current = fns[tab](panel, scope) || null;
  }

  function instancesTab(p) {
    const draw = () => {
      if (!job.instances.length) {
        swap(p, empty("No instance yet", job.status === "Submitted" ? "The scheduler picks the job up in a moment." : "This job has not run on an instance."));
        return;
      }
      swap(
        p,
        h(
          "div",
          { class: "instances" },
          [...job.instances].reverse().map((i) => {
            const isCur = job.instance && job.instance.id === i.id;
            return h(
              "article",
              { class: ["inst card", isCur && "inst-current"], "data-instance": i.id },
              h(
                "header",
                { class: "inst-head" },
                h("h3", "Instance ", h("span", { class: "mono" }, i.id)),
                isCur ? h("span", { class: "tag tag-current" }, "current") : null,
                h("span", { class: ["tag", `inst-${i.status}`] }, i.status),
              ),
              h("div", { class: "inst-type" }, h("strong", `${i.spot ? "Spot" : "On-demand"} ${i.type}`), h("span", { class: "sep", "aria-hidden": "true" }, "|"), `${fmtVcpu(i.vcpus)} · ${fmtGiB(i.memory_gib)}`, h("span", { class: "muted" }, ` · ${fmtPrice(i.price_per_hour)}`)),
              h(
                "div",
                { class: "inst-grid" },
                kv("Address", h("span", { class: "mono" }, i.address || "—")),
                kv("Status", i.status),
                kv("Start time", fmtDateTime(i.started_at)),
                kv("End time", i.ended_at ? fmtDateTime(i.ended_at) : "—"),
                kv("Ran for", fmtDuration(((parseTime(i.ended_at) ?? Date.now()) - parseTime(i.started_at)) / 1000)),
                kv("Cost", fmtCost(i.cost_usd)),
              ),
            );
          }),
        ),
      );
    };
    draw();
    return { update: draw };
  }

  function wwTab(p, sc) {
    return renderWaveWatcher(p, sc, job);
  }

  function eventsTab(p) {
    let n = -1;
    const draw = () => {
      if (job.events.length === n) return;
      n = job.events.length;
      const evs = [...job.events].reverse();
      swap(
        p,
        evs.length
          ? h(
              "ol",
              { class: "timeline" },
              evs.map((e) => {
                let title;
                let tone = e.type;
                if (e.type === "state") {
                  title = h("span", { class: "ev-states" }, e.from_state ? [badge(e.from_state), h("span", { class: "arrow", "aria-label": "to" }, "→")] : null, badge(e.to_state));
                  tone = `state tone-${stateInfo(e.to_state).tone}`;
                } else if (e.type === "migration") {
                  const k = reasonKind(e.reason);
                  title = h(
                    "span",
                    h("strong", `Migrated ${e.from_type} → ${e.to_type}`),
                    " ",
                    h("span", { class: `reason-chip rk-${k.key}` }, k.label),
                    h("span", { class: "muted" }, ` · downtime ${trimNum(e.downtime_s ?? 0, 2)} s · checkpoint ${fmtBytes(e.checkpoint_bytes)}`),
                  );
                } else title = h("strong", { class: "ev-type" }, e.type);
                return h(
                  "li",
                  { class: ["ev", `ev-${e.type}`], "data-event": e.id },
                  h("span", { class: ["ev-dot", tone], "aria-hidden": "true" }, icon({ state: "refresh", migration: "migrate", policy: "modify", error: "alert", info: "info" }[e.type] || "info", { size: 13 })),
                  h("div", { class: "ev-body" }, h("div", { class: "ev-title" }, title), e.reason ? h("div", { class: "ev-reason" }, e.reason) : null),
                  h("time", { class: "ev-time", datetime: e.time, title: fmtAgo(e.time) }, fmtDateTime(e.time)),
                );
              }),
            )
          : empty("No events", null),
      );
    };
    draw();
    return { update: draw };
  }

  function logsTab(p, sc) {
    let stream = "stdout";
    let offset = 0;
    let follow = true;
    let size = 0;
    const MAX = 1024 * 1024;
    const pre = h("pre", { class: "logs", tabindex: "0", "aria-label": "Job output", "aria-live": "off", "data-testid": "logs" });
    const info = h("span", { class: "muted logs-info" });
    const followBox = h("input", { type: "checkbox", checked: true, id: id("follow") });
    followBox.addEventListener("change", () => {
      follow = followBox.checked;
      if (follow) pre.scrollTop = pre.scrollHeight;
    });
    pre.addEventListener("scroll", () => {
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
      if (!atEnd && follow) {
        follow = false;
        followBox.checked = false;
      }
    });
    const seg = h("div", { class: "segmented segmented-sm", role: "radiogroup", "aria-label": "Stream" });
    const sizes = { stdout: null, stderr: null };
    let chosen = false; // the user picked a stream: do not switch automatically
    const drawSeg = () =>
      replace(
        seg,
        ["stdout", "stderr"].map((s) =>
          h(
            "button",
            {
              type: "button",
              role: "radio",
              class: "seg",
              "aria-checked": String(s === stream),
              "data-stream": s,
              onclick: () => {
                chosen = true;
                if (s === stream) return;
                stream = s;
                offset = 0;
                pre.textContent = "";
                drawSeg();
                poll();
              },
            },
            s,
            sizes[s] !== null ? h("span", { class: "seg-count" }, fmtBytes(sizes[s])) : null,
          ),
        ),
      );
    drawSeg();
    replace(
      p,
      h(
        "div",
        { class: "logs-wrap" },
        h("div", { class: "logs-bar" }, seg, h("label", { class: "check", for: followBox.id }, followBox, h("span", "Follow")), info),
        pre,
      ),
    );
    async function peek(s) {
      // offset past the end: the answer carries only the size
      const r = await get(`/jobs/${enc(job.id)}/logs?stream=${s}&offset=9007199254740992`, { signal: sc.signal });
      return r.size;
    }
    async function poll() {
      const other = stream === "stdout" ? "stderr" : "stdout";
      const otherSize = await peek(other);
      if (!chosen && !offset && stream === "stdout" && otherSize > 0 && (await peek("stdout")) === 0) {
        stream = "stderr"; // Jupyter writes its log to stderr
      }
      const changed = sizes[other] !== otherSize;
      sizes[other] = otherSize;
      const want = stream;
      const r = await get(`/jobs/${enc(job.id)}/logs?stream=${want}&offset=${offset}`, { signal: sc.signal });
      if (want !== stream) return;
      if (r.offset < offset) pre.textContent = ""; // the log was truncated or replaced
      if (r.data) {
        pre.append(document.createTextNode(r.data));
        if (pre.textContent.length > MAX) pre.textContent = pre.textContent.slice(-MAX);
      }
      offset = r.offset;
      size = r.size;
      if (changed || sizes[want] !== size) {
        sizes[want] = size;
        drawSeg();
      }
      info.textContent = size ? `${fmtBytes(size)}` : "";
      if (!pre.textContent) pre.dataset.empty = TERMINAL.has(job.status) ? "No output." : "Waiting for output…";
      else delete pre.dataset.empty;
      if (follow) pre.scrollTop = pre.scrollHeight;
      if (r.offset < r.size) await poll(); // more than one chunk behind
    }
    sc.every(1500, poll);
    return null;
  }

  function connectTab(p) {
    const url = stableUrl(job);
    let token = null;
    const cmdPre = h("pre", { class: "cmd cmd-light", "data-testid": "gateway-command" });
    const draw = () => {
      cmdPre.textContent = `jupyter lab --gateway-url=${shq(url)} --GatewayClient.auth_token=${token ? shq(token) : "<token>"}`;
    };
    draw();
    const tokBtn = button("Create a token for this command", { kind: "primary", ic: "plus" });
    const tokNote = h("p", { class: "hint" }, "Any outgrow API token works (", h("code", "outgrow token create NAME"), "). A new one is shown once; revoke it with ", h("code", "outgrow token revoke ID"), ".");
    tokBtn.addEventListener("click", async () => {
      tokBtn.disabled = true;
      try {
        const t = await post("/tokens", { name: `gateway-${job.name}`.slice(0, 64) });
        token = t.token;
        draw();
        tokBtn.hidden = true;
        replace(tokNote, icon("alert", { size: 15 }), ` Token "${t.name}" (id ${t.id}) created. Copy the command now: the token is not shown again.`);
        tokNote.classList.add("warn");
      } catch (e) {
        toast(e.message, "error");
      } finally {
        tokBtn.disabled = false;
      }
    });
    replace(
      p,
      h(
        "div",
        { class: "connect card" },
        h("h3", "Use this server from your own JupyterLab"),
        h("p", "This job runs a headless Jupyter Server. Start JupyterLab on your machine with the job as its kernel gateway: notebooks stay local, kernels run here, and keep running (with their memory) when the job is migrated — the URL does not change."),
        h("div", { class: "cmd-row" }, cmdPre, copyButton(() => cmdPre.textContent, { attrs: { "data-testid": "copy-gateway" } })),
        h("div", { class: "connect-token" }, tokBtn, tokNote),
        h("dl", { class: "connect-facts" }, h("dt", "Gateway URL"), h("dd", h("code", url)), h("dt", "Works while"), h("dd", "Executing; requests wait while the job is Floating")),
      ),
    );
    return null;
  }

  function securityTab(p) {
    const draw = () => {
      const spec = job.spec;
      const publish = spec.publish.length ? spec.publish : isJupyter ? ["8888:8888 (image default)"] : [];
      const rules = job.security_group || [];
      swap(
        p,
        h(
          "div",
          { class: "sg" },
          h(
            "div",
            { class: "sg-spec card" },
            h("h3", "What the job spec asks for"),
            h(
              "div",
              { class: "sg-grid" },
              kv("Published ports (host : job)", publish.length ? h("div", { class: "chips" }, publish.map((x) => h("span", { class: "chip mono" }, x))) : h("span", { class: "muted" }, "none")),
              kv("Allowed sources (allow_cidr)", spec.allow_cidr.length ? h("div", { class: "chips" }, spec.allow_cidr.map((x) => h("span", { class: "chip mono" }, x))) : h("span", { class: "muted" }, "none: only the control plane (stable URL)")),
            ),
            h("p", { class: "hint" }, "Inbound connections are denied unless a rule below allows them; the stable URL goes through the control plane, so it needs no rule. Outbound traffic is not restricted."),
          ),
          rules.length
            ? h(
                "div",
                { class: "card table-scroll" },
                h(
                  "table",
                  { class: "table table-compact sg-table" },
                  h("caption", { class: "sr-only" }, "Security group rules, in evaluation order"),
                  h("thead", h("tr", ["#", "Action", "Direction", "Protocol", "Port", "Source", "Why"].map((c) => h("th", { scope: "col" }, c)))),
                  h(
                    "tbody",
                    rules.map((r, i) =>
                      h(
                        "tr",
                        { class: `sg-${r.action}` },
                        h("td", { class: "muted" }, String(i + 1)),
                        h("td", h("span", { class: ["tag", r.action === "allow" ? "tag-allow" : "tag-deny"] }, r.action)),
                        h("td", r.direction),
                        h("td", r.proto),
                        h("td", { class: "mono" }, r.port === null || r.port === undefined ? "any" : String(r.port), r.to_port ? ` → ${r.to_port}` : ""),
                        h("td", { class: "mono" }, r.from, r.to ? ` → ${r.to}` : ""),
                        h("td", r.why),
                      ),
                    ),
                  ),
                ),
              )
            : h("p", { class: "muted" }, "This provider does not report rules."),
        ),
      );
    };
    draw();
    return { update: draw };
  }

  // ---- actions -------------------------------------------------------------------------
  const ACTION_TEXT = {
    suspend: {
      title: "Suspend job",
      message: "Checkpoint the whole job (kernels, memory, files) and release its instance. A suspended job costs nothing; Resume restores it exactly where it was.",
      label: "Suspend",
      ic: "pause",
    },
    resume: { title: "Resume job", message: "Create an instance of the size the job had and restore its checkpoint there.", label: "Resume", ic: "play" },
    cancel: { title: "Cancel job", message: "Stop the job and release its instance. Its state (memory, unsaved work) is lost.", label: "Cancel job", ic: "cancel", danger: true },
    restart: { title: "Restart job", message: "Start a new run of this job from the same spec, on a fresh instance. The previous run's state is not restored.", label: "Restart", ic: "restart" },
  };

  async function simple(action) {
    const t = ACTION_TEXT[action];
    await confirm({
      title: `${t.title} ${job.name}?`,
      message: t.message,
      confirmLabel: t.label,
      cancelLabel: action === "cancel" ? "Keep running" : "Cancel",
      danger: t.danger,
      ic: t.ic,
      details: h("p", { class: "cmd-inline" }, h("code", `outgrow ${action} ${shq(job.name)}`)),
      onConfirm: async () => {
        job = await post(`/jobs/${enc(job.id)}/${action}`);
        toast(`${t.label}: ${job.name}`, "success");
        drawAll();
      },
    });
  }

  async function migrateDialog() {
    const types = await cached("/instance-types", 300000);
    const cur = job.instance?.type;
    let usedBytes = null;
    try {
      const m = await get(`/jobs/${enc(job.id)}/metrics?from=${(Date.now() / 1000 - 15).toFixed(0)}`);
      const lastP = m.points[m.points.length - 1];
      usedBytes = lastP ? lastP.mem_used_bytes : null;
    } catch {
      usedBytes = null;
    }
    const curT = types.find((t) => t.name === cur);
    const suggestion = types.filter((t) => curT && t.memory_gib > curT.memory_gib).sort((a, b) => a.price_per_hour - b.price_per_hour)[0] || types.find((t) => t.name !== cur);
    const name = id("mig");
    const cmd = h("code");
    const list = h(
      "div",
      { class: "type-list", role: "radiogroup", "aria-label": "Target instance type", "data-field": "instance_type" },
      types.map((t) => {
        const tooSmall = usedBytes !== null && t.memory_gib * 1024 ** 3 < usedBytes;
        const isCur = t.name === cur;
        return h(
          "label",
          { class: ["type-opt", isCur && "is-current", tooSmall && "too-small"] },
          h("input", { type: "radio", name, value: t.name, disabled: isCur, checked: suggestion && t.name === suggestion.name, onchange: () => (cmd.textContent = `outgrow migrate ${shq(job.name)} --instance-type ${t.name}`) }),
          h("span", { class: "type-name mono" }, t.name),
          h("span", { class: "type-size" }, `${fmtVcpu(t.vcpus)} · ${fmtGiB(t.memory_gib)}`),
          h("span", { class: "type-price" }, fmtPrice(job.instance?.spot ? t.spot_price_per_hour : t.price_per_hour)),
          isCur ? h("span", { class: "tag tag-current" }, "current") : tooSmall ? h("span", { class: "tag tag-warn" }, "below current use") : h("span"),
        );
      }),
      h("div", { class: "field-error", role: "alert" }),
    );
    cmd.textContent = suggestion ? `outgrow migrate ${shq(job.name)} --instance-type ${suggestion.name}` : "";
    await dialog({
      title: `Migrate ${job.name}`,
      body: [
        h("p", { class: "dialog-message" }, "Checkpoint the running job and restore it on a new instance of the chosen type. Kernels keep their state; the stable URL does not change. Downtime is usually a few seconds."),
        usedBytes !== null ? h("p", { class: "muted" }, `Memory in use now: ${fmtBytes(usedBytes)} on ${cur}.`) : null,
        list,
        h("p", { class: "cmd-inline" }, cmd),
      ],
      wide: true,
      initial: `input[name="${name}"]:checked`,
      actions: [
        { label: "Cancel", value: "cancel" },
        { label: "Migrate", value: "ok", kind: "primary", ic: "migrate", primary: true },
      ],
      onSubmit: async () => {
        const chosen = list.querySelector(`input[name="${name}"]:checked`);
        if (!chosen) throw new Error("Choose an instance type.");
        job = await post(`/jobs/${enc(job.id)}/migrate`, { instance_type: chosen.value });
        toast(`Migrating ${job.name} to ${chosen.value}`, "success");
        drawAll();
      },
    });
  }

  async function modifyDialog() {
    const amp = policyForm(job.spec.migrate_policy, () => draw());
    const vm = vmPolicyForm(job.spec.vm_policy, () => draw());
    const idle = h("input", { type: "text", class: "mono", value: job.spec.idle_timeout_s !== null && job.spec.idle_timeout_s !== undefined ? fmtDurationSpec(job.spec.idle_timeout_s) : "", placeholder: "2h" });
    const cmd = h("code");
    const body = h(
      "div",
      { class: "modify" },
      h("p", { class: "dialog-message" }, "Change how this job grows and shrinks. A running job may migrate at once if it is already past a new threshold."),
      amp.el,
      h("h4", { class: "sub-h" }, "Capacity (VM policy)"),
      vm.el,
      field({ label: "Idle timeout", control: idle, name: "idle_timeout_s", hint: "30m, 2h, 1d; 0 never suspends" }),
      h("p", { class: "cmd-inline" }, cmd),
    );
    function changes() {
      const out = {};
      const mp = amp.value();
      const vp = vm.value();
      if (mp !== job.spec.migrate_policy) out.migrate_policy = mp;
      if (vp !== job.spec.vm_policy) out.vm_policy = vp;
      const t = idle.value.trim();
      if (t) {
        const s = parseDurationSpec(t);
        if (s === null) out.idle_timeout_s = t;
        else if (s !== job.spec.idle_timeout_s) out.idle_timeout_s = s;
      }
      return out;
    }
    function draw() {
      const c = changes();
      const parts = [`outgrow modify ${shq(job.name)}`];
      if (c.migrate_policy) parts.push(`--migrate-policy ${shq(c.migrate_policy)}`);
      if (c.vm_policy) parts.push(`--vm-policy ${shq(c.vm_policy)}`);
      if (typeof c.idle_timeout_s === "number") parts.push(`--idle-timeout ${fmtDurationSpec(c.idle_timeout_s)}`);
      cmd.textContent = parts.length > 1 ? parts.join(" ") : "No change yet.";
    }
    idle.addEventListener("input", draw);
    draw();
    await dialog({
      title: `Modify ${job.name}`,
      body,
      wide: true,
      actions: [
        { label: "Cancel", value: "cancel" },
        { label: "Save changes", value: "ok", kind: "primary", ic: "check", primary: true },
      ],
      onSubmit: async () => {
        clearFieldErrors(body);
        const c = changes();
        if (typeof c.idle_timeout_s === "string") {
          showFieldError(body, { field: "idle_timeout_s", message: "Use a duration such as 30m, 2h or 1d." });
          return false;
        }
        if (!Object.keys(c).length) throw new Error("Nothing changed.");
        try {
          job = await patch(`/jobs/${enc(job.id)}`, c);
        } catch (e) {
          if (e instanceof ApiError && e.field && showFieldError(body, e)) return false;
          throw e;
        }
        toast(`Policy of ${job.name} updated`, "success");
        drawAll();
      },
    });
  }

  async function templateDialog() {
    more.open = false;
    let names = [];
    try {
      names = (await get("/templates")).map((t) => t.name);
    } catch {
      names = [];
    }
    const input = h("input", { type: "text", value: uniqueName(job.name.replace(/[^A-Za-z0-9_.-]/g, "-"), names), autofocus: true, spellcheck: "false", maxlength: 63 });
    const f = field({ label: "Template name", control: input, name: "name", hint: "Letters, digits, '_', '.', '-'. Submit it later from Templates, with any change." });
    await dialog({
      title: "Save as template",
      body: [h("p", { class: "dialog-message" }, `Save the spec of ${job.name} (image, size, policies, network, script) to start the same job again later.`), f],
      initial: "input",
      actions: [
        { label: "Cancel", value: "cancel" },
        { label: "Save template", value: "ok", kind: "primary", ic: "save", primary: true },
      ],
      onSubmit: async () => {
        clearFieldErrors(f);
        try {
          const t = await post(`/jobs/${enc(job.id)}/template`, { name: input.value.trim() });
          toast(`Template ${t.name} saved`, "success");
        } catch (e) {
          if (e instanceof ApiError) {
            showFieldError(f.parentElement, { field: "name", message: e.message });
            return false;
          }
          throw e;
        }
      },
    });
  }

  function drawAll() {
    drawHeader();
    drawSummary();
    drawTabs();
    if (current && current.update) current.update(job);
  }

  async function refresh() {
    job = await get(`/jobs/${enc(job.id)}`, { signal: ctx.signal });
    drawAll();
  }

  drawHeader();
  drawSummary();
  drawTabs();
  openTab();
  ctx.onCleanup(() => scope && scope.dispose());
  let first = true;
  ctx.every(2000, async () => {
    if (first) {
      first = false;
      return;
    }
    await refresh();
  });
}
