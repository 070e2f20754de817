// The console shell: session, sidebar navigation and a hash router (#/jobs, #/jobs/<id>/<tab>,
// #/submit, #/library, #/templates, #/login). Each page module exports
// render(main, ctx) and uses ctx.every()/ctx.onCleanup() for polling, stopped on navigation.
import { api, ApiError, onUnauthorized } from "./api.js";
import { h, replace } from "./dom.js";
import { icon } from "./icons.js";
import { errorBox, toast } from "./ui.js";

const PAGES = {
  login: () => import("./pages/login.js"),
  jobs: () => import("./pages/jobs.js"),
  job: () => import("./pages/job.js"),
  submit: () => import("./pages/submit.js"),
  library: () => import("./pages/library.js"),
  templates: () => import("./pages/templates.js"),
};

const ROUTES = [
  [/^\/login$/, "login", []],
  [/^\/(?:jobs)?$/, "jobs", []],
  [/^\/jobs\/([^/]+)(?:\/([a-z-]+))?$/, "job", ["id", "tab"]],
  [/^\/submit$/, "submit", []],
  [/^\/library$/, "library", []],
  [/^\/templates$/, "templates", []],
];

const NAV = [
  { page: "jobs", href: "#/jobs", label: "Jobs", ic: "jobs" },
  { page: "submit", href: "#/submit", label: "Submit job", ic: "plus" },
  { page: "library", href: "#/library", label: "App Library", ic: "grid" },
  { page: "templates", href: "#/templates", label: "Templates", ic: "template" },
];

const state = { user: null, ctx: null, shell: null, main: null, navLinks: new Map(), seq: 0 };

export function navigate(hash, { replace: rep = false } = {}) {
  if (rep) {
    history.replaceState(null, "", hash);
    route();
  } else if (location.hash === hash) route();
  else location.hash = hash;
}

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/jobs";
  const [path, qs] = raw.split("?", 2);
  const query = Object.fromEntries(new URLSearchParams(qs || ""));
  for (const [re, page, names] of ROUTES) {
    const m = re.exec(path);
    if (m) {
      const params = Object.fromEntries(names.map((n, i) => [n, m[i + 1] ? decodeURIComponent(m[i + 1]) : undefined]));
      return { page, params, query, path };
    }
  }
  return { page: "jobs", params: {}, query: {}, path: "/jobs" };
}

function makeCtx(route) {
  const timers = new Set();
  const cleanups = [];
  const ctrl = new AbortController();
  const ctx = {
    ...route,
    user: state.user,
    alive: true,
    signal: ctrl.signal,
    navigate,
    onCleanup: (fn) => cleanups.push(fn),
    /** Run fn now and then every ms (never overlapping; paused while the tab is hidden). */
    every(ms, fn) {
      let handle = null;
      let stopped = false;
      const tick = async () => {
        if (stopped || !ctx.alive) return;
        if (!document.hidden) {
          try {
            await fn();
          } catch (e) {
            if (e.name !== "AbortError" && !(e instanceof ApiError && e.status === 401)) console.warn(e);
          }
        }
        if (!stopped && ctx.alive) handle = setTimeout(tick, ms);
      };
      tick();
      const stop = () => {
        stopped = true;
        clearTimeout(handle);
      };
      timers.add(stop);
      return stop;
    },
    dispose() {
      ctx.alive = false;
      ctrl.abort();
      timers.forEach((stop) => stop());
      cleanups.forEach((fn) => {
        try {
          fn();
        } catch (e) {
          console.warn(e);
        }
      });
    },
  };
  return ctx;
}

function buildShell() {
  const navList = h(
    "ul",
    { class: "nav-list" },
    NAV.map((n) => {
      const a = h("a", { href: n.href, class: "nav-link", "data-page": n.page }, icon(n.ic, { size: 19 }), h("span", n.label));
      state.navLinks.set(n.page, a);
      return h("li", a);
    }),
  );
  const userBox = h("div", { class: "nav-user" });
  const sidebar = h(
    "aside",
    { class: "sidebar" },
    h(
      "a",
      { class: "brand", href: "#/jobs", "aria-label": "outgrow — jobs" },
      h("img", { src: "/static/img/favicon.svg", alt: "", width: 28, height: 28 }),
      h("span", { class: "brand-name" }, "outgrow"),
    ),
    h("nav", { "aria-label": "Main" }, navList),
    userBox,
  );
  const main = h("main", { id: "main", class: "main", tabindex: "-1" });
  const shell = h("div", { class: "shell" }, sidebar, main);
  state.shell = shell;
  state.main = main;
  state.userBox = userBox;
  return shell;
}

function renderUser() {
  const u = state.user;
  replace(
    state.userBox,
    h(
      "div",
      { class: "user-chip", title: u.is_admin ? "administrator" : "user" },
      h("span", { class: "avatar", "aria-hidden": "true" }, u.name.slice(0, 1).toUpperCase()),
      h("span", { class: "user-name" }, u.name, u.is_admin ? h("span", { class: "user-role" }, "admin") : null),
    ),
    h(
      "button",
      { type: "button", class: "btn btn-ghost btn-sm nav-logout", onclick: logout, "data-testid": "logout" },
      icon("logout", { size: 16 }),
      h("span", "Log out"),
    ),
  );
}

async function logout() {
  try {
    await api("DELETE", "/session");
  } catch (e) {
    console.warn(e);
  }
  state.user = null;
  toast("Logged out", "info");
  navigate("#/login");
}

export function setUser(user) {
  state.user = user;
}

async function route() {
  const seq = ++state.seq;
  const r = parseHash();
  const root = document.getElementById("app");
  if (state.ctx) state.ctx.dispose();
  state.ctx = null;

  if (r.page !== "login" && !state.user) {
    try {
      state.user = await api("GET", "/me");
    } catch (e) {
      if (seq !== state.seq) return;
      if (e instanceof ApiError && e.status === 401) {
        const back = location.hash && !location.hash.startsWith("#/login") ? location.hash : "";
        history.replaceState(null, "", `#/login${back ? `?next=${encodeURIComponent(back)}` : ""}`);
        return route();
      }
      replace(root, h("div", { class: "boot-error" }, errorBox(e, () => route())));
      root.removeAttribute("aria-busy");
      return;
    }
  }
  if (seq !== state.seq) return;
  const ctx = makeCtx(r);
  ctx.user = state.user;
  state.ctx = ctx;

  let mod;
  try {
    mod = await PAGES[r.page]();
  } catch (e) {
    replace(root, errorBox(e));
    return;
  }
  if (seq !== state.seq) return;

  if (r.page === "login") {
    state.shell = null;
    const page = h("div", { class: "login-page", id: "main" });
    replace(root, page);
    root.removeAttribute("aria-busy");
    await mod.render(page, ctx);
    return;
  }
  if (!state.shell || !root.contains(state.shell)) replace(root, buildShell());
  renderUser();
  for (const [page, a] of state.navLinks) {
    const on = page === r.page || (page === "jobs" && r.page === "job");
    a.classList.toggle("active", on);
    if (on) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const main = state.main;
  main.className = `main page-${r.page}`;
  replace(main);
  root.removeAttribute("aria-busy");
  try {
    await mod.render(main, ctx);
  } catch (e) {
    if (e.name === "AbortError" || seq !== state.seq) return;
    console.error(e);
    replace(main, h("div", { class: "page" }, errorBox(e, () => route())));
  }
  if (seq === state.seq && ctx.focusMain !== false && document.activeElement === document.body) {
    main.focus({ preventScroll: true });
  }
}

onUnauthorized(() => {
  if (!state.user) return;
  state.user = null;
  toast("Your session ended; please log in again", "error");
  navigate(`#/login?next=${encodeURIComponent(location.hash)}`);
});

window.addEventListener("hashchange", () => {
  window.scrollTo(0, 0);
  route();
});
route();
