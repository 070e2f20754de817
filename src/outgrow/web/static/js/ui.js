// Shared widgets: buttons, dialogs (native <dialog>: focus trap, Escape), toasts, copy,
// tabs with arrow-key navigation, empty states, field errors.
import { h, id, replace } from "./dom.js";
import { icon } from "./icons.js";

export function button(label, { kind = "secondary", ic = null, onclick, disabled = false, title, type = "button", size, attrs = {} } = {}) {
  return h(
    "button",
    {
      type,
      class: ["btn", `btn-${kind}`, size && `btn-${size}`],
      onclick,
      disabled,
      title,
      ...attrs,
    },
    ic ? icon(ic, { size: size === "sm" ? 15 : 17 }) : null,
    label ? h("span", label) : null,
  );
}

export function linkButton(label, href, { kind = "secondary", ic = null, external = false, size, attrs = {} } = {}) {
  return h(
    "a",
    {
      class: ["btn", `btn-${kind}`, size && `btn-${size}`],
      href,
      target: external ? "_blank" : null,
      rel: external ? "noopener" : null,
      ...attrs,
    },
    ic ? icon(ic, { size: size === "sm" ? 15 : 17 }) : null,
    h("span", label),
  );
}

// ---- toasts ---------------------------------------------------------------------------
export function toast(message, tone = "info", ms = 3500) {
  const box = document.getElementById("toasts");
  const el = h(
    "div",
    { class: ["toast", `toast-${tone}`] },
    icon(tone === "error" ? "alert" : tone === "success" ? "check" : "info"),
    h("span", message),
  );
  box.append(el);
  setTimeout(() => {
    el.classList.add("leaving");
    setTimeout(() => el.remove(), 250);
  }, ms);
}

// ---- dialogs --------------------------------------------------------------------------
/**
 * A modal dialog. body: nodes. actions: [{label, kind, value, ic}] — resolves with the value
 * of the clicked action (or null on Escape/close). onSubmit(value) may return false (or
 * throw) to keep the dialog open (e.g. show an API error inside it).
 */
export function dialog({ title, body, actions, onSubmit, wide = false, initial = null, describedBy = null }) {
  return new Promise((resolve) => {
    const titleId = id("dlg-title");
    const err = h("div", { class: "form-error", role: "alert", hidden: true });
    const btns = actions.map((a) =>
      button(a.label, {
        kind: a.kind || "secondary",
        ic: a.ic,
        type: a.value === "submit" || a.primary ? "submit" : "button",
        attrs: { value: String(a.value), "data-value": String(a.value) },
      }),
    );
    const form = h(
      "form",
      { method: "dialog", class: "dialog-form", novalidate: true },
      h("header", { class: "dialog-head" }, h("h2", { id: titleId }, title)),
      h("div", { class: "dialog-body" }, body, err),
      h("footer", { class: "dialog-foot" }, btns),
    );
    const dlg = h("dialog", { class: ["dialog", wide && "dialog-wide"], "aria-labelledby": titleId, "aria-describedby": describedBy }, form);
    let done = false;
    const finish = (v) => {
      if (done) return;
      done = true;
      dlg.close();
      dlg.remove();
      resolve(v);
    };
    const run = async (value) => {
      if (value === "cancel" || value === "null") return finish(null);
      if (!onSubmit) return finish(value);
      err.hidden = true;
      btns.forEach((b) => (b.disabled = true));
      try {
        const r = await onSubmit(value, { showError });
        if (r === false) return;
        finish(r === undefined ? value : r);
      } catch (e) {
        showError(e.message || String(e));
      } finally {
        btns.forEach((b) => (b.disabled = false));
      }
    };
    function showError(msg) {
      replace(err, icon("alert"), h("span", msg));
      err.hidden = false;
    }
    btns.forEach((b) =>
      b.addEventListener("click", (ev) => {
        ev.preventDefault();
        if (b.type === "submit" && !form.reportValidity()) return;
        run(b.dataset.value);
      }),
    );
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const primary = btns.find((b) => b.type === "submit");
      if (primary && !primary.disabled) run(primary.dataset.value);
    });
    dlg.addEventListener("cancel", (ev) => {
      ev.preventDefault();
      finish(null);
    });
    dlg.addEventListener("click", (ev) => {
      if (ev.target === dlg) finish(null); // backdrop
    });
    document.body.append(dlg);
    dlg.showModal();
    const focusEl = (initial && form.querySelector(initial)) || form.querySelector("[autofocus]") || btns.find((b) => b.dataset.value === "cancel") || btns[0];
    if (focusEl) focusEl.focus();
  });
}

/** Confirm an action: resolves true/false. danger: red confirm button. */
export async function confirm({ title, message, confirmLabel = "Confirm", cancelLabel = "Cancel", danger = false, ic = null, details = null, onConfirm = null }) {
  const r = await dialog({
    title,
    body: [h("p", { class: "dialog-message" }, message), details],
    actions: [
      { label: cancelLabel, value: "cancel" },
      { label: confirmLabel, value: "ok", kind: danger ? "danger" : "primary", ic, primary: true },
    ],
    onSubmit: onConfirm ? async () => (await onConfirm()) ?? "ok" : null,
  });
  return r !== null;
}

// ---- copy -----------------------------------------------------------------------------
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const ta = h("textarea", { class: "sr-only", "aria-hidden": "true" }, text);
    document.body.append(ta);
    ta.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch {
      ok = false;
    }
    ta.remove();
    return ok;
  }
}

export function copyButton(getText, { label = "Copy", kind = "ghost", size = "sm", attrs = {} } = {}) {
  const b = button(label, { kind, ic: "copy", size, attrs });
  b.addEventListener("click", async () => {
    const ok = await copyText(typeof getText === "function" ? getText() : getText);
    const span = b.querySelector("span");
    if (span) span.textContent = ok ? "Copied" : "Copy failed";
    b.classList.toggle("copied", ok);
    setTimeout(() => {
      if (span) span.textContent = label;
      b.classList.remove("copied");
    }, 1600);
  });
  return b;
}

// ---- tabs -----------------------------------------------------------------------------
/** tabs: [{key, label, count}] → a tablist; onSelect(key). Arrow keys move between tabs. */
export function tabList(tabs, active, onSelect, { label = "Sections", idPrefix = "tab" } = {}) {
  const list = h("div", { class: "tabs", role: "tablist", "aria-label": label });
  const els = tabs.map((t) =>
    h(
      "button",
      {
        type: "button",
        role: "tab",
        class: "tab",
        id: `${idPrefix}-${t.key}`,
        "aria-selected": String(t.key === active),
        "aria-controls": `${idPrefix}-panel`,
        tabindex: t.key === active ? "0" : "-1",
        "data-tab": t.key,
        onclick: () => onSelect(t.key),
      },
      t.ic ? icon(t.ic, { size: 16 }) : null,
      t.label,
      t.count !== undefined && t.count !== null ? h("span", { class: "tab-count" }, String(t.count)) : null,
    ),
  );
  list.append(...els);
  list.addEventListener("keydown", (ev) => {
    const i = els.indexOf(document.activeElement);
    if (i < 0) return;
    let j = null;
    if (ev.key === "ArrowRight") j = (i + 1) % els.length;
    else if (ev.key === "ArrowLeft") j = (i - 1 + els.length) % els.length;
    else if (ev.key === "Home") j = 0;
    else if (ev.key === "End") j = els.length - 1;
    if (j !== null) {
      ev.preventDefault();
      els[j].focus();
      onSelect(tabs[j].key);
    }
  });
  return list;
}

export function empty(title, text, ...actions) {
  return h(
    "div",
    { class: "empty" },
    h("div", { class: "empty-art", "aria-hidden": "true" }, icon("box", { size: 30 })),
    h("h3", title),
    text ? h("p", text) : null,
    actions.length ? h("div", { class: "empty-actions" }, actions) : null,
  );
}

export function skeleton(rows = 3) {
  return h(
    "div",
    { class: "skeleton", "aria-hidden": "true" },
    Array.from({ length: rows }, () => h("div", { class: "sk-line" })),
  );
}

export function errorBox(e, retry) {
  return h(
    "div",
    { class: "error-box", role: "alert" },
    icon("alert"),
    h("div", h("strong", "Could not load"), h("p", e.message || String(e))),
    retry ? button("Retry", { onclick: retry, size: "sm" }) : null,
  );
}

/** A labelled field: label + control + hint + error slot (aria-describedby wired). */
export function field({ label, control, hint = null, name = null, required = false, cls = null, suffix = null }) {
  const cid = control.id || id("f");
  control.id = cid;
  const errId = `${cid}-err`;
  const hintId = `${cid}-hint`;
  const desc = [hint ? hintId : null, errId].filter(Boolean).join(" ");
  control.setAttribute("aria-describedby", desc);
  if (required) control.required = true;
  const wrap = h(
    "div",
    { class: ["field", cls], "data-field": name },
    h("label", { for: cid, class: "field-label" }, label, required ? h("span", { class: "req", "aria-hidden": "true" }, " *") : null),
    suffix ? h("div", { class: "input-group" }, control, h("span", { class: "input-suffix" }, suffix)) : control,
    hint ? h("div", { class: "field-hint", id: hintId }, hint) : null,
    h("div", { class: "field-error", id: errId, role: "alert" }),
  );
  return wrap;
}

/** Show an API error next to its field (data-field match, longest prefix), else in `fallback`. */
export function showFieldError(root, err, fallback) {
  clearFieldErrors(root);
  const fieldName = err.field || "";
  let target = null;
  if (fieldName) {
    const candidates = [...root.querySelectorAll("[data-field]")];
    let best = -1;
    for (const c of candidates) {
      const names = c.dataset.field.split(" ");
      for (const n of names) {
        if ((fieldName === n || fieldName.startsWith(`${n}.`)) && n.length > best) {
          best = n.length;
          target = c;
        }
      }
    }
  }
  if (target) {
    target.classList.add("has-error");
    const slot = target.querySelector(":scope > .field-error, :scope .field-error");
    // "allow_cidr: allow_cidr '…' is not…" → the part after the field name (it is shown
    // next to the field already)
    if (slot) slot.textContent = err.message.replace(/^[A-Za-z_][\w.]*: (?=\S)/, "");
    const clearOne = () => {
      target.classList.remove("has-error");
      if (slot) slot.textContent = "";
      target.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
      target.removeEventListener("input", clearOne);
      target.removeEventListener("change", clearOne);
    };
    target.addEventListener("input", clearOne);
    target.addEventListener("change", clearOne);
    const section = target.closest("details");
    if (section) section.open = true;
    const ctl = target.querySelector("input, select, textarea");
    if (ctl) {
      ctl.setAttribute("aria-invalid", "true");
      ctl.focus({ preventScroll: true });
    }
    (ctl || target).scrollIntoView({ block: "center", behavior: "smooth" });
  } else if (fallback) {
    replace(fallback, icon("alert"), h("span", err.message));
    fallback.hidden = false;
    fallback.scrollIntoView({ block: "center", behavior: "smooth" });
  }
  return target;
}

export function clearFieldErrors(root) {
  root.querySelectorAll(".has-error").forEach((el) => {
    el.classList.remove("has-error");
    const slot = el.querySelector(".field-error");
    if (slot) slot.textContent = "";
  });
  root.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
  root.querySelectorAll(".form-error").forEach((el) => (el.hidden = true));
}

export function kv(label, value, { mono = false, cls = null } = {}) {
  return h("div", { class: ["kv", cls] }, h("div", { class: "kv-label" }, label), h("div", { class: ["kv-value", mono && "mono"] }, value));
}
