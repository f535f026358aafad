import { TwinError } from '../common/errors.js';
import { ControlClient } from '../control/client.js';
import { describeEvent } from '../repl/events.js';
import { describeStatus } from '../repl/status-text.js';
import { type ConnectArgs, resolveConnection } from './connect.js';

export interface WatchArgs extends ConnectArgs {
  json?: boolean;
  /** Where it draws (default stdout); a terminal gets a redrawn screen, anything else lines. */
  out?: NodeJS.WritableStream & { isTTY?: boolean; rows?: number };
  /** Ends the watch (default: SIGINT or SIGTERM). */
  signal?: AbortSignal;
}

const KEEP_EVENTS = 12;

/**
 * `twinfs status --watch`: the server's status, kept current from its event stream (no
 * polling). On a terminal the screen is redrawn after each burst of events: the status as
 * `twinfs status` prints it, then the last events. Elsewhere: the status once, then one plain
 * line per event (`HH:MM:SS event: what`); with --json, the status as one JSON line
 * ({"event":"status",...}) and each event as one ({"event":NAME,"data":...,"time":...}).
 * Ends with 0 on Ctrl-C/SIGTERM, with ETWIN_CONTROL_CLOSED when the server goes away.
 */
export async function watchStatus(a: WatchArgs): Promise<number> {
  const out = a.out ?? process.stdout;
  const conn = await resolveConnection({ ...a, client: 'twinfs-status-watch' });
  const client = await ControlClient.connect(conn.url, {
    token: conn.token,
    ca: conn.ca,
    client: 'twinfs-status-watch',
  });
  const tty = Boolean(out.isTTY) && !a.json;
  const events: string[] = [];
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  if (!a.signal) {
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
  } else a.signal.addEventListener('abort', onSignal, { once: true });

  let status: any = await client.request('status');
  let redraw: NodeJS.Timeout | undefined;
  let refreshing = false;
  const draw = () => {
    const lines = describeStatus(status, null);
    const rows = out.rows ?? 40;
    const room = Math.max(3, rows - lines.length - 4);
    // Home, clear to the end of the screen: no flicker from a full clear.
    out.write(
      '\x1b[H\x1b[2J' +
        [
          `twinfs status --watch  ${conn.url}  ${new Date().toLocaleTimeString()}  (Ctrl-C to stop)`,
          '',
          ...lines,
          '',
          'events:',
          ...(events.length ? events.slice(-room) : ['  (none yet)']),
        ].join('\n') +
        '\n',
    );
  };
  /** The status changed: ask for it once the burst of events settled, then redraw. */
  const refresh = () => {
    if (redraw || refreshing) return;
    redraw = setTimeout(async () => {
      redraw = undefined;
      refreshing = true;
      try {
        status = await client.request('status');
        draw();
      } catch {
        // The connection is closing: onClose ends the watch.
      } finally {
        refreshing = false;
      }
    }, 100);
  };

  if (a.json) out.write(JSON.stringify({ event: 'status', ...status }) + '\n');
  else if (tty) draw();
  else for (const l of describeStatus(status, null)) out.write(l + '\n');

  const time = () => new Date().toTimeString().slice(0, 8);
  const sub = client.onEvent((e) => {
    if (a.json) {
      out.write(JSON.stringify({ event: e.event, data: e.data, time: new Date().toISOString() }) + '\n');
      return;
    }
    const line = `${time()} ${e.event}: ${describeEvent(e.event, e.data)}`;
    if (!tty) {
      out.write(line + '\n');
      return;
    }
    events.push(line);
    if (events.length > 200) events.splice(0, events.length - KEEP_EVENTS * 4);
    refresh();
  });

  const ended = await new Promise<{ closed?: number }>((resolve) => {
    client.onClose((c) => resolve(stop.signal.aborted ? {} : { closed: c.code }));
    stop.signal.addEventListener('abort', () => resolve({}), { once: true });
  });
  clearTimeout(redraw);
  sub.dispose();
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  await client.close();
  if (ended.closed !== undefined)
    throw new TwinError('ETWIN_CONTROL_CLOSED', `the server closed the connection (${ended.closed})`, {
      code: ended.closed,
    });
  return 0;
}
