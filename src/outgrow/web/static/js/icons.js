// Hand-drawn 24×24 stroke icons (inline SVG, no icon font, no network).
import { s } from "./dom.js";

const P = {
  jobs: ["M8 6h13", "M8 12h13", "M8 18h13", "M3.5 6h.01", "M3.5 12h.01", "M3.5 18h.01"],
  plus: ["M12 5v14", "M5 12h14"],
  grid: ["M4 4h6v6H4z", "M14 4h6v6h-6z", "M4 14h6v6H4z", "M14 14h6v6h-6z"],
  template: ["M12 3l9 5-9 5-9-5 9-5z", "M3 13l9 5 9-5", "M3 17.5l9 5 9-5"],
  logout: ["M9 21H5a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2h4", "M16 17l5-5-5-5", "M21 12H9"],
  refresh: ["M21 12a9 9 0 1 1-3-6.7", "M21 4v5h-5"],
  migrate: ["M4 14v5a1 1 0 0 0 1 1h14a1 1 0 0 0 1-1v-5", "M12 3v12", "M7 8l5-5 5 5"],
  modify: ["M4 6h10", "M18 6h2", "M4 12h4", "M12 12h8", "M4 18h12", "M20 18h0", "M16 4v4", "M10 10v4", "M18 16v4"],
  pause: ["M9 5v14", "M15 5v14"],
  play: ["M7 4.5v15l12-7.5z"],
  cancel: ["M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18z", "M15 9l-6 6", "M9 9l6 6"],
  restart: ["M3 12a9 9 0 1 0 3-6.7", "M3 4v5h5"],
  open: ["M14 4h6v6", "M20 4l-9 9", "M18 14v5a1 1 0 0 1-1 1H5a1 1 0 0 1-1-1V7a1 1 0 0 1 1-1h5"],
  copy: ["M9 9h10a1 1 0 0 1 1 1v10a1 1 0 0 1-1 1H9a1 1 0 0 1-1-1V10a1 1 0 0 1 1-1z", "M5 15H4a1 1 0 0 1-1-1V4a1 1 0 0 1 1-1h10a1 1 0 0 1 1 1v1"],
  check: ["M5 12.5l4.5 4.5L19 7"],
  save: ["M6 3h12a1 1 0 0 1 1 1v17l-7-4-7 4V4a1 1 0 0 1 1-1z"],
  clone: ["M8 8h12v12H8z", "M4 16V4h12"],
  trash: ["M4 7h16", "M10 11v6", "M14 11v6", "M6 7l1 13h10l1-13", "M9 7V4h6v3"],
  eye: ["M2 12s3.5-7 10-7 10 7 10 7-3.5 7-10 7S2 12 2 12z", "M12 15a3 3 0 1 0 0-6 3 3 0 0 0 0 6z"],
  book: ["M4 4.5A1.5 1.5 0 0 1 5.5 3H20v15H5.5A1.5 1.5 0 0 0 4 19.5z", "M4 19.5A1.5 1.5 0 0 0 5.5 21H20v-3"],
  rocket: ["M5 15c-1.5 1-2 4-2 6 2 0 5-.5 6-2", "M9 15l-3-3c1-4 4-8 11-9 -1 7-5 10-9 11z", "M14.5 9.5h.01"],
  terminal: ["M4 17l6-5-6-5", "M12 19h8"],
  shield: ["M12 3l8 3v6c0 5-3.5 8-8 9-4.5-1-8-4-8-9V6l8-3z"],
  wave: ["M2 12c2.5-5 4.5-5 7 0s4.5 5 7 0 3.5-3 6-1"],
  list: ["M4 6h16", "M4 12h16", "M4 18h10"],
  box: ["M12 3l8 4.5v9L12 21l-8-4.5v-9L12 3z", "M4 7.5l8 4.5 8-4.5", "M12 12v9"],
  info: ["M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18z", "M12 11v5", "M12 8h.01"],
  alert: ["M12 3l10 17H2L12 3z", "M12 10v4", "M12 17h.01"],
  chevron: ["M6 9l6 6 6-6"],
  back: ["M15 18l-6-6 6-6"],
  upload: ["M12 16V4", "M7 9l5-5 5 5", "M4 20h16"],
  x: ["M6 6l12 12", "M18 6L6 18"],
  user: ["M12 12a4 4 0 1 0 0-8 4 4 0 0 0 0 8z", "M4 21a8 8 0 0 1 16 0"],
  cpu: ["M7 7h10v10H7z", "M10 3v4", "M14 3v4", "M10 17v4", "M14 17v4", "M3 10h4", "M3 14h4", "M17 10h4", "M17 14h4"],
  clock: ["M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18z", "M12 7v5l3 2"],
};

export function icon(name, { size = 18, cls = "" } = {}) {
  const paths = P[name] || P.info;
  return s(
    "svg",
    {
      class: `icon ${cls}`,
      width: size,
      height: size,
      viewBox: "0 0 24 24",
      fill: name === "play" ? "currentColor" : "none",
      stroke: "currentColor",
      "stroke-width": 1.8,
      "stroke-linecap": "round",
      "stroke-linejoin": "round",
      "aria-hidden": "true",
      focusable: "false",
    },
    paths.map((d) => s("path", { d })),
  );
}
