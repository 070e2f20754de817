// A small, safe Markdown renderer for image docs: headings, paragraphs, lists, fenced code,
// `code`, **bold**, *em* and http(s) links. Builds DOM nodes (no innerHTML).
import { h } from "./dom.js";

function inline(text) {
  const out = [];
  const re = /(`[^`]+`)|(\*\*[^*]+\*\*)|(\*[^*\s][^*]*\*)|(\[[^\]]+\]\([^)\s]+\))/g;
  let last = 0;
  let m;
  while ((m = re.exec(text))) {
    if (m.index > last) out.push(text.slice(last, m.index));
    const tok = m[0];
    if (m[1]) out.push(h("code", tok.slice(1, -1)));
    else if (m[2]) out.push(h("strong", inline(tok.slice(2, -2))));
    else if (m[3]) out.push(h("em", inline(tok.slice(1, -1))));
    else {
      const lm = /^\[([^\]]+)\]\(([^)\s]+)\)$/.exec(tok);
      const url = lm[2];
      if (/^https?:\/\//i.test(url)) {
        out.push(h("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, lm[1]));
      } else out.push(lm[1]);
    }
    last = m.index + tok.length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

export function markdown(src) {
  const root = h("div", { class: "md" });
  const lines = String(src || "").replace(/\r\n/g, "\n").split("\n");
  let i = 0;
  let para = [];
  let list = null;
  const flushPara = () => {
    if (para.length) root.append(h("p", inline(para.join(" "))));
    para = [];
  };
  const flushList = () => {
    if (list) root.append(list);
    list = null;
  };
  while (i < lines.length) {
    const line = lines[i];
    const fence = /^```(\w*)\s*$/.exec(line);
    if (fence) {
      flushPara();
      flushList();
      const code = [];
      i += 1;
      while (i < lines.length && !/^```\s*$/.test(lines[i])) {
        code.push(lines[i]);
        i += 1;
      }
      root.append(h("pre", h("code", code.join("\n"))));
      i += 1;
      continue;
    }
    const head = /^(#{1,4})\s+(.*)$/.exec(line);
    const item = /^\s*[*-]\s+(.*)$/.exec(line);
    if (head) {
      flushPara();
      flushList();
      const level = Math.min(6, head[1].length + 2); // docs' "#" sits under a card title
      root.append(h(`h${level}`, inline(head[2])));
    } else if (item) {
      flushPara();
      if (!list) list = h("ul");
      list.append(h("li", inline(item[1])));
    } else if (/^\s+\S/.test(line) && list && list.lastChild) {
      list.lastChild.append(" ", ...inline(line.trim())); // continuation of a list item
    } else if (line.trim() === "") {
      flushPara();
      flushList();
    } else {
      flushList();
      para.push(line.trim());
    }
    i += 1;
  }
  flushPara();
  flushList();
  return root;
}
