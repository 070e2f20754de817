// The `outgrow submit …` command equivalent to a job spec (the one the console POSTs).
import { fmtDurationSpec } from "./format.js";

const SAFE = /^[A-Za-z0-9_@%+=:,./-]+$/;

/** POSIX-shell quoting: bare when safe, else single quotes ('\'' for a quote). */
export function shq(word) {
  const w = String(word);
  if (w !== "" && SAFE.test(w)) return w;
  return `'${w.replaceAll("'", "'\\''")}'`;
}

function heredocTag(script) {
  const lines = new Set(script.split("\n"));
  let tag = "EOF";
  let i = 0;
  while (lines.has(tag)) {
    i += 1;
    tag = `EOF${i}`;
  }
  return tag;
}

/**
 * spec: a JobSpec as sent to the API. opts.scriptFile: the name of a loaded script file
 * whose content is unchanged (then `--script FILE`, else a here-document on stdin).
 * Returns {text, args}: the multi-line command (flags continued with " \") and the argv.
 */
export function submitCommand(spec, { scriptFile = null } = {}) {
  const args = [["outgrow", "submit"], ["-n", spec.name || "NAME"], ["-i", spec.image || "IMAGE"]];
  if (spec.instance_type) args.push(["--instance-type", spec.instance_type]);
  else args.push(["-c", spec.cpu], ["-m", spec.mem]);
  if (spec.migrate_policy && spec.migrate_policy !== "[]") {
    args.push(["--migrate-policy", spec.migrate_policy]);
  }
  if (spec.vm_policy && spec.vm_policy !== "[]") args.push(["--vm-policy", spec.vm_policy]);
  for (const [k, v] of Object.entries(spec.env || {})) args.push(["-e", `${k}=${v}`]);
  for (const p of spec.publish || []) args.push(["--publish", p]);
  for (const c of spec.allow_cidr || []) args.push(["--allow-cidr", c]);
  if (spec.jupyter) args.push(["--jupyter", spec.jupyter]);
  if (spec.idle_timeout_s !== null && spec.idle_timeout_s !== undefined) {
    args.push(["--idle-timeout", fmtDurationSpec(spec.idle_timeout_s)]);
  }
  let heredoc = "";
  if (spec.script) {
    if (scriptFile) args.push(["--script", scriptFile]);
    else {
      const tag = heredocTag(spec.script);
      args.push(["--script", "/dev/stdin"]);
      const body = spec.script.endsWith("\n") ? spec.script : `${spec.script}\n`;
      heredoc = ` <<'${tag}'\n${body}${tag}`;
    }
  }
  const lines = args.map((group) => group.map(shq).join(" "));
  const text = lines.join(" \\\n    ") + heredoc;
  return { text, argv: args.flat() };
}
