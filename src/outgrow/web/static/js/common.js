// Pieces shared by several pages: page header, job durations, one-click start, image kinds.
import { cached, post } from "./api.js";
import { h } from "./dom.js";
import { fmtGiB, fmtVcpu, parseTime } from "./format.js";
import { icon } from "./icons.js";
import { TERMINAL } from "./states.js";

export function pageHeader({ title, subtitle = null, actions = [], back = null, titleExtra = null }) {
  return h(
    "header",
    { class: "page-head" },
    h(
      "div",
      { class: "page-head-text" },
      back ? h("a", { class: "back-link", href: back.href }, icon("back", { size: 16 }), back.label) : null,
      h("div", { class: "page-title-row" }, h("h1", { class: "page-title" }, title), titleExtra),
      subtitle ? h("div", { class: "page-sub" }, subtitle) : null,
    ),
    actions.length ? h("div", { class: "page-actions" }, actions) : null,
  );
}

/** Seconds the job has existed (until now, or until it reached a terminal state). */
export function jobDuration(job, now = Date.now()) {
  const start = parseTime(job.submitted_at);
  const end = TERMINAL.has(job.status) ? parseTime(job.updated_at) : now;
  return Math.max(0, (end - start) / 1000);
}

export function instanceLabel(inst) {
  if (!inst) return null;
  return `${fmtVcpu(inst.vcpus)} · ${fmtGiB(inst.memory_gib)}${inst.spot ? " · spot" : ""}`;
}

export const JUPYTER_KINDS = new Set(["jupyter-lab", "jupyter-server"]);

export async function imagesByName() {
  const list = await cached("/images");
  return new Map(list.map((i) => [i.name, i]));
}

export async function kindOf(imageName) {
  try {
    const m = await imagesByName();
    return m.get(imageName)?.kind || "";
  } catch {
    return "";
  }
}

export function shortKind(kind) {
  return { "jupyter-lab": "lab", "jupyter-server": "server", python: "py" }[kind] || "job";
}

export function randomSuffix() {
  const a = new Uint8Array(2);
  crypto.getRandomValues(a);
  return [...a].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Sensible defaults for an image: a small instance, the default migration policy
 * (evadeOOM on), and the image's port published for Jupyter kinds. */
export function defaultSpec(image) {
  const spec = {
    name: `${shortKind(image.kind)}-${randomSuffix()}`,
    image: image.name,
    cpu: "1",
    mem: "1",
    migrate_policy: "[]",
    vm_policy: "[]",
    env: {},
    publish: [],
    allow_cidr: [],
  };
  const mode = ociJupyter(image);
  if (mode) spec.jupyter = mode;
  if (JUPYTER_KINDS.has(image.kind) || mode) {
    const port = image.default_port || 8888;
    spec.publish = [`${port}:${port}`];
  }
  return spec;
}

/** The Jupyter an OCI image can serve ("lab" first, else "server"), or null. */
export function ociJupyter(image) {
  if (image.format !== "oci") return null;
  const modes = image.jupyter || [];
  return modes.includes("lab") ? "lab" : modes.includes("server") ? "server" : null;
}

/** What a job on this image runs: the kind, or the OCI image's own Jupyter. */
export function runKind(image) {
  const mode = ociJupyter(image);
  return mode ? `jupyter-${mode}` : image.kind;
}

export async function oneClickStart(image) {
  return post("/jobs", defaultSpec(image));
}

/** A job name not used by the given jobs: base, base-2, base-3... */
export function uniqueName(base, taken) {
  const names = new Set(taken);
  const root = base.replace(/-\d+$/, "");
  if (!names.has(base)) return base;
  for (let i = 2; i < 1000; i += 1) {
    const n = `${root}-${i}`.slice(0, 63);
    if (!names.has(n)) return n;
  }
  return `${root}-${randomSuffix()}`;
}

/** The stable URL of a job (served by the control plane's proxy, survives migrations). */
export function stableUrl(job, path = "") {
  return `${location.origin}/jobs/${encodeURIComponent(job.id)}/${path}`;
}

export function openHref(job, kind) {
  return stableUrl(job, kind === "jupyter-lab" ? "lab" : "");
}

export function kindIcon(kind) {
  return { "jupyter-lab": "book", "jupyter-server": "terminal", python: "cpu" }[kind] || "box";
}
