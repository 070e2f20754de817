// App Library: one card per image with its docs; one click starts a job with sensible
// defaults, "Customise" opens the submit form; add (and remove) your own images.
import { del, enc, get, invalidate, post } from "../api.js";
import { h, replace } from "../dom.js";
import { icon } from "../icons.js";
import { markdown } from "../markdown.js";
import { button, clearFieldErrors, confirm, dialog, errorBox, field, linkButton, showFieldError, skeleton, toast } from "../ui.js";
import { defaultSpec, JUPYTER_KINDS, kindIcon, ociJupyter, pageHeader, runKind, uniqueName } from "../common.js";
import { fmtBytes } from "../format.js";

const KIND_TEXT = {
  "jupyter-lab": "JupyterLab in the browser",
  "jupyter-server": "Kernel gateway for your local JupyterLab",
  python: "Batch script",
};

/** "host:/var/cache/…" → "this host", "s3://…" → "S3" (the full paths are the title). */
function cachedWhere(where) {
  if (where.startsWith("host:")) return where.includes("not unpacked") ? "this host (packed)" : "this host";
  return where.startsWith("s3://") ? "S3" : where;
}

export async function render(root, ctx) {
  document.title = "App Library · outgrow";
  const grid = h("div", { class: "lib-grid" }, skeleton(3));
  const addBtn = button("Add image", { kind: "primary", ic: "plus", onclick: () => addImage() });
  replace(
    root,
    h(
      "div",
      { class: "page" },
      pageHeader({
        title: "App Library",
        subtitle: "Environments to run jobs in. Start one with a click: a small instance that grows live when the job needs more.",
        actions: [addBtn],
      }),
      grid,
    ),
  );
  let images = [];
  let jobs = [];

  async function load() {
    invalidate("/images");
    [images, jobs] = await Promise.all([get("/images"), get("/jobs")]);
    draw();
  }

  async function start(img, b) {
    b.disabled = true;
    const label = b.querySelector("span");
    if (label) label.textContent = "Starting…";
    try {
      const spec = defaultSpec(img);
      spec.name = uniqueName(spec.name, jobs.map((j) => j.name));
      const job = await post("/jobs", spec);
      toast(`Started ${job.name} (${img.name})`, "success");
      ctx.navigate(`#/jobs/${enc(job.id)}`);
    } catch (e) {
      toast(e.message, "error");
      b.disabled = false;
      if (label) label.textContent = "Start";
    }
  }

  function docs(img) {
    dialog({
      title: `${img.name} — documentation`,
      body: [img.docs ? markdown(img.docs) : h("p", { class: "muted" }, "No documentation for this image."), pipList(img, 99)],
      wide: true,
      actions: [{ label: "Close", value: "cancel" }],
    });
  }

  function ociFacts(img) {
    const conf = img.config || {};
    const cmd = [...(conf.entrypoint || []), ...(conf.cmd || [])].join(" ");
    return h(
      "div",
      { class: "chips", "aria-label": "Image" },
      h("span", { class: "chip mono", title: img.oci.digest }, img.oci.digest.slice(0, 19)),
      img.size_bytes != null ? h("span", { class: "chip" }, fmtBytes(img.size_bytes)) : null,
      cmd ? h("span", { class: "chip mono", title: "Entrypoint + Cmd" }, cmd) : null,
    );
  }

  function pipList(img, max = 5) {
    if (img.format === "oci") return ociFacts(img);
    const shown = img.pip.slice(0, max);
    return h(
      "div",
      { class: "chips", "aria-label": "Packages" },
      shown.map((p) => h("span", { class: "chip mono" }, p)),
      img.pip.length > max ? h("span", { class: "chip chip-more" }, `+${img.pip.length - max}`) : null,
    );
  }

  async function remove(img) {
    const ok = await confirm({
      title: `Remove image ${img.name}?`,
      message: img.format === "oci" ? "Its cached copy is deleted too. Refused while a job that has not ended uses it." : "Jobs already using it keep running; new jobs cannot use it.",
      confirmLabel: "Remove",
      danger: true,
      ic: "trash",
      onConfirm: () => del(`/images/${enc(img.name)}`),
    });
    if (ok) {
      toast(`Image ${img.name} removed`, "success");
      load();
    }
  }

  function card(img) {
    const running = jobs.filter((j) => j.image === img.name && !["Completed", "Cancelled", "FailToComplete", "FailToExecute"].includes(j.status)).length;
    const oci = img.format === "oci";
    const conf = img.config || {};
    const hasCmd = (conf.entrypoint || []).length + (conf.cmd || []).length > 0;
    // An OCI image starts its own Jupyter when it has one, else its Entrypoint/Cmd.
    const needsScript = oci ? !ociJupyter(img) && !hasCmd : img.kind === "python";
    const kind = runKind(img);
    const kindText = oci ? `OCI image · ${ociJupyter(img) ? `its own Jupyter ${ociJupyter(img) === "lab" ? "Lab" : "Server"}` : "runs its command"}` : KIND_TEXT[img.kind] || img.kind;
    const startBtn = needsScript
      ? linkButton("Write script", `#/submit?image=${enc(img.name)}`, { kind: "primary", ic: "plus", attrs: { "data-action": "start" } })
      : button("Start", { kind: "primary", ic: "rocket", attrs: { "data-action": "start", "aria-label": `Start ${img.name}` } });
    if (!needsScript) startBtn.addEventListener("click", () => start(img, startBtn));
    return h(
      "article",
      { class: ["lib-card card", `kind-${kind}`], "data-image": img.name, "data-format": img.format || "venv" },
      h(
        "header",
        { class: "lib-head" },
        h("div", { class: "lib-icon", "aria-hidden": "true" }, icon(oci && !ociJupyter(img) ? "box" : kindIcon(kind), { size: 24 })),
        h(
          "div",
          { class: "lib-title" },
          h("h2", img.name),
          h("div", { class: "lib-kind" }, kindText, img.base ? h("span", { class: "muted" }, ` · from ${img.base}`) : null),
        ),
        img.builtin ? h("span", { class: "tag" }, "built-in") : h("span", { class: "tag tag-user" }, img.owner ? `by ${img.owner}` : "custom"),
      ),
      h("p", { class: "lib-desc" }, img.description),
      pipList(img),
      h(
        "dl",
        { class: "lib-facts" },
        h("dt", "Defaults"),
        h("dd", `1 vCPU · 1 GiB, grows on demand${JUPYTER_KINDS.has(kind) ? ` · port ${img.default_port || 8888}` : ""}`),
        oci && (img.cached || []).length ? [h("dt", "Cached"), h("dd", { title: img.cached.join("\n") }, img.cached.map(cachedWhere).join(", "))] : null,
        running ? [h("dt", "Running"), h("dd", `${running} job${running === 1 ? "" : "s"}`)] : null,
      ),
      h(
        "footer",
        { class: "lib-actions" },
        startBtn,
        linkButton("Customise", `#/submit?image=${enc(img.name)}`, { ic: "modify", attrs: { "data-action": "customise" } }),
        h(
          "span",
          { class: "lib-actions-end" },
          button("Docs", { kind: "ghost", ic: "book", onclick: () => docs(img), attrs: { "data-action": "docs" } }),
          !img.builtin ? button("", { kind: "ghost", ic: "trash", onclick: () => remove(img), attrs: { "aria-label": `Remove ${img.name}`, title: "Remove image" } }) : null,
        ),
      ),
    );
  }

  function draw() {
    replace(grid, images.map(card), h("button", { type: "button", class: "lib-add card", onclick: () => addImage() }, icon("plus", { size: 26 }), h("strong", "Add an image"), h("span", "A built-in image plus your pip packages")));
  }

  async function addImage() {
    const name = h("input", { type: "text", placeholder: "my-pandas", spellcheck: "false", autofocus: true, maxlength: 40 });
    const base = h("select", images.filter((i) => i.builtin).map((i) => h("option", { value: i.name, selected: i.name === "jupyter-lab" }, `${i.name} — ${i.kind}`)));
    const pip = h("textarea", { rows: 3, class: "code", placeholder: "pyarrow scikit-learn==1.7.2", spellcheck: "false" });
    const desc = h("input", { type: "text", maxlength: 500, placeholder: "JupyterLab with pyarrow and scikit-learn" });
    const body = h(
      "div",
      { class: "form-stack" },
      field({ label: "Name", control: name, name: "name", required: true, hint: "lowercase letters, digits, '-'" }),
      field({ label: "Based on", control: base, name: "base" }),
      field({ label: "Extra pip packages", control: pip, name: "pip", required: true, hint: "Requirement specifiers separated by spaces or lines. Built on first use, then cached." }),
      field({ label: "Description", control: desc, name: "description" }),
    );
    await dialog({
      title: "Add an image",
      body,
      initial: "input",
      actions: [
        { label: "Cancel", value: "cancel" },
        { label: "Add image", value: "ok", kind: "primary", ic: "plus", primary: true },
      ],
      onSubmit: async () => {
        clearFieldErrors(body);
        try {
          await post("/images", { name: name.value.trim(), base: base.value, pip: pip.value.trim(), description: desc.value.trim() });
        } catch (e) {
          if (showFieldError(body, e)) return false;
          throw e;
        }
        toast(`Image ${name.value.trim()} added`, "success");
        load();
      },
    });
  }

  try {
    await load();
  } catch (e) {
    if (e.name !== "AbortError") replace(grid, errorBox(e, load));
  }
}
