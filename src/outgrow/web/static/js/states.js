// The job states (domain/states.py) as users see them: a colour tone, a one-line meaning,
// and whether the state is transitional (animated dot).
import { h } from "./dom.js";

export const STATES = {
  Submitted: { tone: "neutral", busy: true, text: "Accepted, waiting to be scheduled" },
  Initializing: { tone: "info", busy: true, text: "Choosing an instance type, creating the instance" },
  Starting: { tone: "info", busy: true, text: "Instance up; preparing the image and starting the job" },
  Executing: { tone: "success", busy: false, text: "Running" },
  Floating: { tone: "float", busy: true, text: "Live-migrating to another instance" },
  Suspending: { tone: "warn", busy: true, text: "Checkpointing before releasing the instance" },
  Suspended: { tone: "warn", busy: false, text: "Checkpoint stored, no instance (no cost)" },
  Resuming: { tone: "info", busy: true, text: "New instance, restoring the checkpoint" },
  Completed: { tone: "done", busy: false, text: "The job's process exited 0" },
  Cancelling: { tone: "muted", busy: true, text: "Stopping, releasing the instance" },
  Cancelled: { tone: "muted", busy: false, text: "Cancelled by the user" },
  FailToComplete: { tone: "danger", busy: false, text: "The job ran and failed" },
  FailToExecute: { tone: "danger", busy: false, text: "The job never ran" },
  NoAvailableHost: { tone: "orange", busy: true, text: "No instance type or capacity fits; will retry" },
};

export const TERMINAL = new Set(["Completed", "Cancelled", "FailToComplete", "FailToExecute"]);

// Filter groups of the jobs table (each is a list of API status values).
export const FILTERS = [
  { key: "all", label: "All", states: [] },
  {
    key: "active",
    label: "Active",
    states: ["Submitted", "Initializing", "Starting", "Executing", "Floating", "Suspending", "Resuming", "Cancelling", "NoAvailableHost"],
  },
  { key: "Executing", label: "Executing", states: ["Executing"] },
  { key: "Floating", label: "Floating", states: ["Floating"] },
  { key: "Suspended", label: "Suspended", states: ["Suspended"] },
  { key: "finished", label: "Finished", states: ["Completed", "Cancelled"] },
  { key: "failed", label: "Failed", states: ["FailToComplete", "FailToExecute", "NoAvailableHost"] },
];

export function stateInfo(status) {
  return STATES[status] || { tone: "neutral", busy: false, text: status };
}

/** The status badge: a coloured pill with a dot (pulsing while the state is transitional). */
export function badge(status, { large = false } = {}) {
  const info = stateInfo(status);
  return h(
    "span",
    {
      class: ["badge", `tone-${info.tone}`, info.busy && "busy", large && "badge-lg"],
      title: info.text,
      "data-status": status,
    },
    h("span", { class: "dot", "aria-hidden": "true" }),
    status,
  );
}
