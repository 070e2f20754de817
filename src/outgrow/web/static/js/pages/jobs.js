// Jobs: every job with a live status badge, filters, bulk suspend/cancel and Open.
import { enc, get, post } from "../api.js";
import { h, replace, swap } from "../dom.js";
import { fmtCost, fmtDuration, fmtPrice } from "../format.js";
import { badge, FILTERS } from "../states.js";
import { confirm, empty, errorBox, linkButton, skeleton, toast, button } from "../ui.js";
import { imagesByName, instanceLabel, jobDuration, JUPYTER_KINDS, oneClickStart, openHref, pageHeader } from "../common.js";

export async function render(root, ctx) {
  document.title = "Jobs · outgrow";
  const selected = new Set();
  let jobs = null;
  let images = new Map();
  let filter = ctx.query.status && FILTERS.some((f) => f.key === ctx.query.status) ? ctx.query.status : "all";
  let search = ctx.query.q || "";

  const summary = h("span", { class: "page-sub-text" }, "Loading…");
  const head = pageHeader({
    title: "Jobs",
    subtitle: summary,
    actions: [
      linkButton("App Library", "#/library", { ic: "grid" }),
      linkButton("Submit job", "#/submit", { kind: "primary", ic: "plus" }),
    ],
  });

  const chips = h("div", { class: "segmented", role: "radiogroup", "aria-label": "Filter by status" });
  const searchBox = h("input", {
    type: "search",
    class: "search",
    placeholder: "Search name, id, image",
    "aria-label": "Filter jobs by name, id or image",
    value: search,
    oninput: () => {
      search = searchBox.value;
      draw();
    },
  });
  const bulkText = h("span", { class: "bulk-text" });
  const bulkSuspend = button("Suspend", { ic: "pause", size: "sm", onclick: () => bulk("suspend") });
  const bulkCancel = button("Cancel", { ic: "cancel", size: "sm", kind: "danger-soft", onclick: () => bulk("cancel") });
  const bulkClear = button("Clear", { size: "sm", kind: "ghost", onclick: () => { selected.clear(); draw(); } });
  const bulkBar = h("div", { class: "bulk", "aria-live": "polite" }, bulkText, bulkSuspend, bulkCancel, bulkClear);
  const toolbar = h("div", { class: "toolbar" }, chips, h("div", { class: "toolbar-right" }, searchBox));
  const body = h("div", { class: "card table-card" }, skeleton(4));
  replace(root, h("div", { class: "page" }, head, toolbar, bulkBar, body));

  function visible() {
    const f = FILTERS.find((x) => x.key === filter);
    const q = search.trim().toLowerCase();
    return (jobs || []).filter(
      (j) =>
        (!f.states.length || f.states.includes(j.status)) &&
        (!q || j.name.toLowerCase().includes(q) || j.id.includes(q) || j.image.toLowerCase().includes(q)),
    );
  }

  function drawChips() {
    swap(
      chips,
      FILTERS.map((f) => {
        const n = (jobs || []).filter((j) => !f.states.length || f.states.includes(j.status)).length;
        return h(
          "button",
          {
            type: "button",
            role: "radio",
            class: "seg",
            "aria-checked": String(f.key === filter),
            "data-key": `filter-${f.key}`,
            "data-filter": f.key,
            onclick: () => {
              filter = f.key;
              history.replaceState(null, "", `#/jobs${filter === "all" ? "" : `?status=${filter}`}`);
              draw();
            },
          },
          f.label,
          h("span", { class: "seg-count" }, String(n)),
        );
      }),
    );
  }

  function drawSummary() {
    const running = jobs.filter((j) => j.instance && !j.instance.ended_at);
    const perHour = running.reduce((a, j) => a + (j.instance?.price_per_hour || 0), 0);
    const floating = jobs.filter((j) => j.status === "Floating").length;
    replace(
      summary,
      `${jobs.length} job${jobs.length === 1 ? "" : "s"} · ${running.length} on an instance`,
      floating ? ` · ${floating} floating` : "",
      running.length ? ` · ${fmtPrice(perHour)} now` : "",
    );
  }

  function drawBulk() {
    const sel = (jobs || []).filter((j) => selected.has(j.id));
    bulkBar.classList.toggle("shown", sel.length > 0);
    bulkText.textContent = `${sel.length} selected`;
    bulkSuspend.disabled = !sel.some((j) => j.actions.includes("suspend"));
    bulkCancel.disabled = !sel.some((j) => j.actions.includes("cancel"));
  }

  function row(j) {
    const kind = images.get(j.image)?.kind || "";
    const canOpen = j.actions.includes("open") && JUPYTER_KINDS.has(kind);
    const inst = j.instance;
    return h(
      "tr",
      { "data-job": j.id, class: selected.has(j.id) ? "selected" : null },
      h(
        "td",
        { class: "col-check" },
        h("input", {
          type: "checkbox",
          "aria-label": `Select ${j.name}`,
          "data-key": `sel-${j.id}`,
          checked: selected.has(j.id),
          onchange: (ev) => {
            if (ev.target.checked) selected.add(j.id);
            else selected.delete(j.id);
            draw();
          },
        }),
      ),
      h(
        "td",
        { class: "col-name" },
        h("a", { href: `#/jobs/${enc(j.id)}`, class: "job-link", "data-key": `link-${j.id}` }, j.name),
        h("div", { class: "sub mono" }, j.id, j.run > 1 ? ` · run ${j.run}` : ""),
      ),
      h("td", { class: "col-image" }, h("span", { class: "image-name" }, j.image), kind && kind !== j.image ? h("div", { class: "sub" }, kind) : null),
      h("td", { class: "col-status" }, badge(j.status)),
      h(
        "td",
        { class: "col-inst" },
        inst ? [h("span", { class: "mono" }, inst.type), h("div", { class: "sub" }, instanceLabel(inst))] : h("span", { class: "muted" }, "—"),
      ),
      h("td", { class: "col-num" }, fmtDuration(jobDuration(j))),
      h("td", { class: "col-num" }, fmtCost(j.cost_usd)),
      h(
        "td",
        { class: "col-open" },
        canOpen && kind === "jupyter-server"
          ? linkButton("Connect", `#/jobs/${enc(j.id)}/connect`, { ic: "terminal", size: "sm", attrs: { "data-key": `open-${j.id}`, "aria-label": `Connect to ${j.name}` } })
          : canOpen
            ? linkButton("Open", openHref(j, kind), { ic: "open", size: "sm", external: true, attrs: { "data-key": `open-${j.id}`, "aria-label": `Open ${j.name}` } })
            : null,
      ),
    );
  }

  function draw() {
    if (!jobs) return;
    drawChips();
    drawSummary();
    drawBulk();
    const rows = visible();
    if (!jobs.length) {
      swap(body, emptyState());
      return;
    }
    const allSel = rows.length > 0 && rows.every((j) => selected.has(j.id));
    const headCheck = h("input", {
      type: "checkbox",
      "aria-label": "Select all shown jobs",
      "data-key": "sel-all",
      checked: allSel,
      indeterminate: !allSel && rows.some((j) => selected.has(j.id)),
      onchange: (ev) => {
        rows.forEach((j) => (ev.target.checked ? selected.add(j.id) : selected.delete(j.id)));
        draw();
      },
    });
    const table = h(
      "table",
      { class: "table jobs-table" },
      h("caption", { class: "sr-only" }, "Jobs"),
      h(
        "thead",
        h(
          "tr",
          h("th", { class: "col-check", scope: "col" }, headCheck),
          h("th", { scope: "col" }, "Name"),
          h("th", { scope: "col" }, "Image"),
          h("th", { scope: "col" }, "Status"),
          h("th", { scope: "col" }, "Instance"),
          h("th", { scope: "col", class: "col-num" }, "Uptime"),
          h("th", { scope: "col", class: "col-num" }, "Cost"),
          h("th", { scope: "col", class: "col-open" }, h("span", { class: "sr-only" }, "Open")),
        ),
      ),
      h("tbody", rows.length ? rows.map(row) : h("tr", h("td", { colspan: 8, class: "no-match" }, "No job matches this filter."))),
    );
    swap(body, h("div", { class: "table-scroll" }, table));
  }

  function emptyState() {
    const lab = images.get("jupyter-lab");
    return empty(
      "No jobs yet",
      "Start JupyterLab in one click, or submit a job with your own size and migration policy.",
      lab
        ? button("Start JupyterLab", {
            kind: "primary",
            ic: "rocket",
            onclick: async (ev) => {
              ev.currentTarget.disabled = true;
              try {
                const job = await oneClickStart(lab);
                ctx.navigate(`#/jobs/${enc(job.id)}`);
              } catch (e) {
                toast(e.message, "error");
                ev.currentTarget.disabled = false;
              }
            },
          })
        : null,
      linkButton("Open the App Library", "#/library", { ic: "grid" }),
    );
  }

  async function bulk(action) {
    const sel = jobs.filter((j) => selected.has(j.id));
    const ok = sel.filter((j) => j.actions.includes(action));
    const skip = sel.filter((j) => !j.actions.includes(action));
    const verb = action === "cancel" ? "Cancel" : "Suspend";
    const details = h(
      "div",
      { class: "bulk-list" },
      h("ul", ok.map((j) => h("li", h("strong", j.name), " ", badge(j.status)))),
      skip.length ? h("p", { class: "muted" }, `Skipped (not possible in their state): ${skip.map((j) => j.name).join(", ")}`) : null,
    );
    const message =
      action === "cancel"
        ? `Cancel ${ok.length} job${ok.length === 1 ? "" : "s"}? Their instances are released and their state is lost.`
        : `Suspend ${ok.length} job${ok.length === 1 ? "" : "s"}? Each is checkpointed and its instance released; resume restores it exactly.`;
    const yes = await confirm({ title: `${verb} jobs`, message, details, confirmLabel: `${verb} ${ok.length}`, cancelLabel: action === "cancel" ? "Keep running" : "Cancel", danger: action === "cancel", ic: action === "cancel" ? "cancel" : "pause" });
    if (!yes) return;
    const results = await Promise.allSettled(ok.map((j) => post(`/jobs/${enc(j.id)}/${action}`)));
    const failed = results.filter((r) => r.status === "rejected");
    if (failed.length) toast(`${failed.length} failed: ${failed[0].reason.message}`, "error");
    else toast(`${verb}: ${ok.length} job${ok.length === 1 ? "" : "s"}`, "success");
    selected.clear();
    refresh();
  }

  async function refresh() {
    const [list, imgs] = await Promise.all([get("/jobs", { signal: ctx.signal }), imagesByName().catch(() => images)]);
    images = imgs;
    jobs = list.sort((a, b) => (a.submitted_at < b.submitted_at ? 1 : -1));
    for (const id of [...selected]) if (!jobs.some((j) => j.id === id)) selected.delete(id);
    draw();
  }

  try {
    await refresh();
  } catch (e) {
    if (e.name === "AbortError") return;
    replace(body, errorBox(e, () => ctx.navigate("#/jobs")));
    return;
  }
  ctx.every(2000, refresh);
}
