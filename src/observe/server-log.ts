import { type Logger, pino } from 'pino';
import pretty from 'pino-pretty';
import type { Disposable } from '../common/lifecycle.js';
import type { BackupService } from '../control/backup-service.js';
import type { ControlEvent } from '../control/control-server.js';
import type { MirrorDriver } from '../mirror-driver/mirror-driver.js';

export type ServerLog = Logger;

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface ServerLogOptions {
  level?: LogLevel;
  /** JSON lines (default: when the destination is not a terminal); else a short human form. */
  json?: boolean;
  /** Where lines go (default stdout, file descriptor 1). */
  fd?: number;
}

/**
 * The server's structured log (pino): one line per thing the server does that an operator
 * looks for later — connections, refused tokens, freezes, prepares with their stall, releases,
 * backups, broken pairs, repairs. JSON lines when stdout is not a terminal (for journald,
 * Loki, jq), pino-pretty's time, level and message on a terminal. Synchronous, so its lines and the
 * server's own output keep their order. Token values never reach it: nothing logs a hello's
 * payload, and `token` fields are redacted should one ever be passed.
 */
export function createServerLog(o: ServerLogOptions = {}): ServerLog {
  const fd = o.fd ?? 1;
  const json = o.json ?? !process.stdout.isTTY;
  const options = {
    level: o.level ?? 'info',
    base: { pid: process.pid },
    redact: { paths: ['token', '*.token'], censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  if (json) return pino(options, pino.destination({ dest: fd, sync: true }));
  return pino(
    options,
    pretty({
      destination: fd,
      sync: true,
      colorize: true,
      translateTime: 'HH:MM:ss.l',
      ignore: 'pid,hostname',
      // Each message says what matters; the fields are for the JSON form.
      hideObject: true,
    }),
  );
}

/** What a server log follows: the control channel, the backup service, the mirror. */
export interface LogSources {
  control?: { onDidControl(l: (e: ControlEvent) => void): Disposable };
  service?: Pick<BackupService, 'onEvent'>;
  mirror?: Pick<MirrorDriver, 'onDidBreak' | 'onDidChangeState'>;
}

/**
 * Writes a line for each event of the sources; returns what unsubscribes them. Each line has
 * `kind` (the control protocol's event names where there is one) and `msg`. Not `event`: with
 * `--json` the server's event lines share stdout and are keyed by `event`, and their readers
 * must not take a log line for one.
 */
export function logServerEvents(log: ServerLog, s: LogSources): Disposable {
  const subs: Disposable[] = [];
  if (s.control)
    subs.push(
      s.control.onDidControl((e) => {
        const { event, ...fields } = e;
        const line = { kind: event, ...fields };
        switch (e.event) {
          case 'connection':
            return log.info(line, `control connection from ${e.remote}`);
          case 'authenticated':
            return log.info(line, `${e.client ?? e.conn} authenticated as ${e.role}`);
          case 'auth-failed':
            return log.warn(line, `wrong token from ${e.remote}${e.client ? ` (${e.client})` : ''}`);
          case 'disconnected':
            return log.info(line, `${e.client ?? e.conn} disconnected`);
          case 'repaired':
            return log.info(line, 'mirror repair done');
          case 'repair-failed':
            return log.error(line, `mirror repair failed: ${e.code}: ${e.message}`);
        }
      }),
    );
  if (s.service)
    subs.push(
      s.service.onEvent(({ event, data }) => {
        const d = data as Record<string, any>;
        const line = { kind: event, ...d };
        switch (event) {
          case 'frozen':
            return log.info(line, `frozen ${selectorText(d.selector)} (${d.freezeId})`);
          case 'thawed':
            return log.info(line, `thawed ${d.freezeId} after ${d.heldMs} ms (${d.reason ?? 'thaw'})`);
          case 'split':
            return log.info(
              { ...line, kind: 'prepare' },
              `prepared ${selectorText(d.selector)} (${d.backupId}): writes held ${d.stallMs} ms`,
            );
          case 'prepare-failed':
            return log.warn(
              { ...line, kind: 'prepare' },
              `prepare of ${selectorText(d.selector)} failed: ${d.code}: ${d.message}`,
            );
          case 'released':
            return log.info(line, `released ${d.backupId}`);
          case 'resynced':
            return log.info(line, `resynced ${d.backupId}: ${d.bytesCopied} bytes in ${d.ms} ms`);
          case 'lease-expired':
            return log.warn(line, `lease of ${d.backupId} expired: split released`);
          case 'backup-progress':
            return log.debug(line, `backup ${d.backupId} to ${d.target}: ${d.bytes}/${d.bytesTotal} bytes`);
          case 'backup-done':
            return d.outcome === 'ok'
              ? log.info(
                  { ...line, kind: 'backup' },
                  `backup ${d.snapshotId ?? d.backupId} to ${d.target} done: ${d.files} entries, ${d.copiedBytes} bytes copied`,
                )
              : log.error(
                  { ...line, kind: 'backup' },
                  `backup ${d.snapshotId ?? d.backupId} to ${d.target} failed: ${d.error?.code}: ${d.error?.message}`,
                );
          default:
            return log.debug(line, event);
        }
      }),
    );
  if (s.mirror) {
    subs.push(
      s.mirror.onDidBreak((e) =>
        log.error({ kind: 'broken', ...e }, `mirror pair broken: ${e.path} (${e.error})`),
      ),
    );
    subs.push(
      s.mirror.onDidChangeState((e) =>
        log.info(
          { kind: 'state', ...e },
          `${e.paths === 'volume' ? 'volume' : e.paths.join(' ')}: ${e.state}`,
        ),
      ),
    );
  }
  return {
    dispose() {
      for (const d of subs) d.dispose();
    },
  };
}

/** A selection as the server keeps it ({paths, subtrees, volume}) in a few words. */
function selectorText(sel: { paths?: string[]; subtrees?: string[]; volume?: boolean } | undefined): string {
  if (!sel) return '?';
  if (sel.volume) return 'the volume';
  const names = [...(sel.paths ?? []), ...(sel.subtrees ?? []).map((t) => `${t}/ (subtree)`)];
  return names.length <= 3 ? names.join(' ') : `${names.slice(0, 3).join(' ')} and ${names.length - 3} more`;
}
