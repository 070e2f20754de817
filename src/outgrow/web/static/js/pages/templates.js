// Templates: saved job specs. View (with the equivalent command), submit (asks a job name),
// customise in the form, delete.
import { del, enc, get, post } from "../api.js";
import { h, replace } from "../dom.js";
import { fmtDateTime, fmtDurationSpec } from "../format.js";
import { shq, submitCommand } from "../cmdline.js";
import { describeMigratePolicy } from "../policy.js";
import { button, clearFieldErrors, confirm, copyButton, dialog, empty, errorBox, field, kv, linkButton, showFieldError, skeleton, toast } from "../ui.js";
import { pageHeader, uniqueName } from "../common.js";

function resources(spec) {
  if (spec.instance_type) return spec.instance_type;
  return `-c ${spec.cpu} -m ${spec.mem}`;
}

export async function render(root, ctx) {
  document.title = "Templates · outgrow";
  const body = h("div", { class: "card table-card" }, skeleton(3));
  replace(
    root,
    h(
      "div",
      { class: "page" },
      pageHeader({
        title: "Templates",
        subtitle: "Saved job configurations: start the same job again without filling the form. Save one from any job's page (More → Save as template).",
        actions: [linkButton("Jobs", "#/jobs", { ic: "jobs" })],
      }),
      body,
    ),
  );
  let templates = [];
  let jobs = [];

  async function load() {
    [templates, jobs] = await Promise.all([get("/templates"), get("/jobs")]);
    draw();
  }

  function view(t) {
    const cmd = submitCommand(t.spec).text;
    const pre = h("pre", { class: "cmd" }, cmd);
    dialog({
      title: `Template ${t.name}`,
      wide: true,
      body: [
        h(
          "div",
          { class: "tpl-facts" },
          kv("Image", t.spec.image),
          kv("Resources", h("span", { class: "mono" }, resources(t.spec))),
          kv("Auto-migration", describeMigratePolicy(t.spec.migrate_policy)),
          kv("Publish", t.spec.publish.join(", ") || "—"),
          kv("Allowed sources", t.spec.allow_cidr.join(", ") || "—"),
          kv("Idle timeout", t.spec.idle_timeout_s !== null && t.spec.idle_timeout_s !== undefined ? fmtDurationSpec(t.spec.idle_timeout_s) : "image default"),
          kv("Environment", Object.keys(t.spec.env).length ? h("span", { class: "mono" }, Object.entries(t.spec.env).map(([k, v]) => `${k}=${v}`).join("  ")) : "—"),
          kv("Owner", t.owner),
        ),
        h("div", { class: "cmd-head cmd-head-light" }, h("h3", "Equivalent command"), copyButton(cmd)),
        pre,
        t.spec.script ? [h("h3", { class: "sub-h" }, "Script"), h("pre", { class: "code-block" }, t.spec.script)] : null,
      ],
      actions: [
        { label: "Close", value: "cancel" },
        { label: "Customise…", value: "customise" },
        { label: "Submit…", value: "submit", kind: "primary", primary: true },
      ],
    }).then((v) => {
      if (v === "submit") submit(t);
      else if (v === "customise") ctx.navigate(`#/submit?template=${enc(t.name)}`);
    });
  }

  async function submit(t) {
    const input = h("input", { type: "text", value: uniqueName(t.spec.name, jobs.map((j) => j.name)), spellcheck: "false", maxlength: 63, autofocus: true });
    const f = field({ label: "Job name", control: input, name: "name", hint: "Everything else comes from the template." });
    const wrap = h("div", f);
    const cmd = h("code");
    const drawCmd = () => (cmd.textContent = `outgrow submit --template ${shq(t.name)} -n ${shq(input.value.trim() || "NAME")}`);
    input.addEventListener("input", drawCmd);
    drawCmd();
    await dialog({
      title: `Submit from ${t.name}`,
      body: [wrap, h("p", { class: "cmd-inline" }, cmd)],
      initial: "input",
      actions: [
        { label: "Cancel", value: "cancel" },
        { label: "Submit", value: "ok", kind: "primary", ic: "rocket", primary: true },
      ],
      onSubmit: async () => {
        clearFieldErrors(wrap);
        let job;
        try {
          job = await post("/jobs", { template: t.name, overrides: { name: input.value.trim() } });
        } catch (e) {
          showFieldError(wrap, { field: "name", message: e.message });
          return false;
        }
        toast(`Job ${job.name} submitted from ${t.name}`, "success");
        ctx.navigate(`#/jobs/${enc(job.id)}`);
      },
    });
  }

  async function remove(t) {
    const ok = await confirm({
      title: `Delete template ${t.name}?`,
      message: "Jobs started from it are not affected.",
      confirmLabel: "Delete",
      danger: true,
      ic: "trash",
      onConfirm: () => del(`/templates/${enc(t.name)}`),
    });
    if (ok) {
      toast(`Template ${t.name} deleted`, "success");
      load();
    }
  }

  function draw() {
    if (!templates.length) {
      replace(body, empty("No templates yet", "Open a job and choose More → Save as template to reuse its configuration.", linkButton("Go to jobs", "#/jobs", { kind: "primary", ic: "jobs" })));
      return;
    }
    replace(
      body,
      h(
        "div",
        { class: "table-scroll" },
        h(
          "table",
          { class: "table" },
          h("caption", { class: "sr-only" }, "Templates"),
          h("thead", h("tr", ["Name", "Image", "Resources", "Auto-migration", "Created", ""].map((c) => h("th", { scope: "col" }, c)))),
          h(
            "tbody",
            templates.map((t) =>
              h(
                "tr",
                { "data-template": t.name },
                h("td", h("button", { type: "button", class: "link-btn", onclick: () => view(t) }, t.name), h("div", { class: "sub" }, `job name ${t.spec.name}`)),
                h("td", t.spec.image),
                h("td", { class: "mono" }, resources(t.spec)),
                h("td", { class: "policy-cell" }, describeMigratePolicy(t.spec.migrate_policy)),
                h("td", { class: "nowrap" }, fmtDateTime(t.created_at)),
                h(
                  "td",
                  { class: "row-actions" },
                  button("Submit", { size: "sm", kind: "primary", ic: "rocket", onclick: () => submit(t), attrs: { "data-action": "submit", "aria-label": `Submit a job from ${t.name}` } }),
                  button("View", { size: "sm", ic: "eye", onclick: () => view(t), attrs: { "data-action": "view" } }),
                  linkButton("Customise", `#/submit?template=${enc(t.name)}`, { size: "sm", ic: "modify" }),
                  button("", { size: "sm", kind: "ghost", ic: "trash", onclick: () => remove(t), attrs: { "aria-label": `Delete ${t.name}`, title: "Delete", "data-action": "delete" } }),
                ),
              ),
            ),
          ),
        ),
      ),
    );
  }

  try {
    await load();
  } catch (e) {
    if (e.name !== "AbortError") replace(body, errorBox(e, load));
  }
}
