// outgrow in JupyterLab: the job's memory against its *current* limit in the status bar,
// and a notification when the notebook was moved to another instance (reason, downtime).
// The numbers come from the server extension (GET <base_url>/outgrow/status), which reads
// the status file the job's agent keeps up to date — after a move, the new instance's.
import { Notification } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Widget } from '@lumino/widgets';

const POLL_MS = 2000;
const GIB = 1024 ** 3;
const HIGH = 0.9; // the status item turns to a warning colour above this share of the limit

export function size(bytes) {
  if (bytes >= GIB) {
    return `${Number((bytes / GIB).toFixed(2))} GiB`;
  }
  return `${Math.round(bytes / 1024 ** 2)} MiB`;
}

export function memText(status) {
  const used = (status.mem_used_bytes || 0) / GIB;
  if (!status.mem_limit_bytes) {
    return `Mem: ${used.toFixed(1)} GiB`;
  }
  return `Mem: ${used.toFixed(1)} / ${(status.mem_limit_bytes / GIB).toFixed(1)} GiB`;
}

// "Moved to lc.large (4 GiB) in 1.1 s: mem 93% ≥ 90% for 30 s"
export function moveText(move) {
  const to = move.to_type || 'another instance';
  const mem = move.to_mem_bytes ? ` (${size(move.to_mem_bytes)})` : '';
  const down = typeof move.downtime_s === 'number' ? ` in ${move.downtime_s.toFixed(1)} s` : '';
  const why = move.reason ? `: ${move.reason}` : '';
  return `Moved to ${to}${mem}${down}${why}`;
}

function title(status) {
  const lines = [`Instance type: ${status.instance_type || 'unknown'}`];
  if (status.mem_limit_bytes) {
    lines.push(`Memory limit now: ${size(status.mem_limit_bytes)}`);
  }
  if (status.last_move) {
    lines.push(`Last move: ${moveText(status.last_move)}`);
  }
  return lines.join('\n');
}

const plugin = {
  id: 'outgrow-lab:status',
  description: "The outgrow job's memory against its current limit, and its moves.",
  autoStart: true,
  optional: [IStatusBar],
  activate: (app, statusBar) => {
    const settings = ServerConnection.makeSettings();
    const url = URLExt.join(settings.baseUrl, 'outgrow', 'status');
    const seenKey = `outgrow-lab:last-move:${settings.baseUrl}`;
    const node = document.createElement('div');
    node.className = 'jp-StatusBar-TextItem';
    const item = new Widget({ node });
    item.id = 'outgrow-lab-memory';
    item.node.textContent = 'Mem: …';
    if (statusBar) {
      statusBar.registerStatusItem('outgrow-lab:memory', { item, align: 'left', rank: 50 });
    }
    let baseline = false;

    const show = status => {
      item.node.textContent = memText(status) + (status.stale ? ' (moving?)' : '');
      item.node.title = title(status);
      const share = status.mem_limit_bytes ? status.mem_used_bytes / status.mem_limit_bytes : 0;
      item.node.style.color = share >= HIGH ? 'var(--jp-warn-color0)' : '';
      item.node.dataset.instanceType = status.instance_type || '';
      const move = status.last_move;
      const id = move ? String(move.at) : '';
      const seen = window.localStorage.getItem(seenKey);
      // The first answer sets the baseline; a move seen before this page is not news,
      // unless this browser saw the job before it (a reload after a move).
      if (!baseline) {
        baseline = true;
        if (seen === null) {
          window.localStorage.setItem(seenKey, id);
          return;
        }
      }
      if (move && id !== seen) {
        window.localStorage.setItem(seenKey, id);
        Notification.info(moveText(move), { autoClose: false });
      }
    };

    const poll = async () => {
      try {
        const r = await ServerConnection.makeRequest(url, {}, settings);
        if (r.ok) {
          const status = await r.json();
          if (status.available) {
            show(status);
          }
        }
      } catch (err) {
        // The server does not answer during a move's downtime: keep the last numbers.
        item.node.title = `outgrow: no status (${err})`;
      }
      window.setTimeout(poll, POLL_MS);
    };
    void poll();
  }
};

export default plugin;
