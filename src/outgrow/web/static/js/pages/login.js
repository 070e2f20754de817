// Log in: POST /api/v1/session sets the HttpOnly session cookie.
import { api } from "../api.js";
import { setUser } from "../app.js";
import { h, replace } from "../dom.js";
import { icon } from "../icons.js";
import { field } from "../ui.js";

export async function render(root, ctx) {
  document.title = "Log in · outgrow";
  const name = h("input", { type: "text", name: "username", autocomplete: "username", value: "admin", autocapitalize: "off", spellcheck: "false" });
  const password = h("input", { type: "password", name: "password", autocomplete: "current-password", autofocus: true });
  const err = h("div", { class: "form-error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", class: "btn btn-primary btn-block" }, h("span", "Log in"));
  const form = h(
    "form",
    { class: "login-form", novalidate: true },
    field({ label: "User", control: name, required: true }),
    field({ label: "Password", control: password, required: true }),
    err,
    submit,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.hidden = true;
    if (!name.value.trim() || !password.value) {
      replace(err, icon("alert"), h("span", "Enter your user name and password."));
      err.hidden = false;
      return;
    }
    submit.disabled = true;
    replace(submit, h("span", { class: "spinner", "aria-hidden": "true" }), h("span", "Logging in…"));
    try {
      const user = await api("POST", "/session", { name: name.value.trim(), password: password.value });
      setUser(user);
      const next = ctx.query.next && ctx.query.next.startsWith("#/") ? ctx.query.next : "#/jobs";
      ctx.navigate(next);
    } catch (e) {
      replace(err, icon("alert"), h("span", e.status === 401 ? "Wrong user name or password." : e.message));
      err.hidden = false;
      password.select();
      password.focus();
    } finally {
      submit.disabled = false;
      replace(submit, h("span", "Log in"));
    }
  });
  replace(
    root,
    h(
      "div",
      { class: "login-wrap" },
      h(
        "section",
        { class: "login-card", "aria-labelledby": "login-title" },
        h("div", { class: "login-brand" }, h("img", { src: "/static/img/favicon.svg", alt: "", width: 40, height: 40 }), h("span", "outgrow")),
        h("h1", { id: "login-title" }, "Log in to the console"),
        h("p", { class: "login-sub" }, "Jobs that move, live, to a bigger machine when they outgrow theirs."),
        form,
        h(
          "p",
          { class: "login-foot" },
          "First start? The admin password was printed by ",
          h("code", "outgrow up"),
          ".",
        ),
      ),
      h(
        "aside",
        { class: "login-aside", "aria-hidden": "true" },
        h("div", { class: "login-art" }, art()),
        h("h2", "When your notebook outgrows its machine, outgrow moves it — live."),
        h(
          "ul",
          h("li", icon("wave", { size: 18 }), "WaveWatcher: memory, CPU, limits and every move, with its reason"),
          h("li", icon("migrate", { size: 18 }), "Checkpoint and restore with CRIU: kernels keep their state"),
          h("li", icon("open", { size: 18 }), "One stable URL per job, wherever it runs"),
        ),
      ),
    ),
  );
  password.focus();
  ctx.focusMain = false;
}

function art() {
  // a tiny illustrative WaveWatcher: usage climbing to a limit, a move, a higher limit
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 320 120");
  svg.setAttribute("class", "login-svg");
  const add = (tag, attrs) => {
    const el = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    svg.append(el);
    return el;
  };
  add("rect", { x: 0, y: 0, width: 150, height: 120, class: "la-exec" });
  add("rect", { x: 150, y: 0, width: 22, height: 120, class: "la-float" });
  add("rect", { x: 172, y: 0, width: 148, height: 120, class: "la-exec" });
  add("path", { d: "M0 62H150", class: "la-limit" });
  add("path", { d: "M172 22H320", class: "la-limit" });
  add("path", { d: "M0 70H150M172 34H320", class: "la-thr" });
  add("path", { d: "M0 108C30 106 50 100 70 96S110 80 125 70 140 63 150 63", class: "la-used" });
  add("path", { d: "M172 64C200 62 230 60 260 56S300 50 320 48", class: "la-used" });
  add("path", { d: "M161 0V120", class: "la-marker" });
  add("circle", { cx: 161, cy: 10, r: 6, class: "la-dot" });
  return svg;
}
