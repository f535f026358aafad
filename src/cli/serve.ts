import * as path from 'node:path';
import { formatError, TwinError } from '../common/errors.js';
import { BackupService } from '../control/backup-service.js';
import { TwinFs } from '../fusefs/index.js';
import { preflight } from '../fusefs/mount-checks.js';
import { defaultStateDir, MirrorDriver } from '../mirror-driver/index.js';
import { ServerMetrics } from '../observe/metrics.js';
import { createServerLog, LOG_LEVELS, type LogLevel, logServerEvents } from '../observe/server-log.js';
import { StatusFeed } from '../observe/status-feed.js';
import { VolumeLock } from '../posix/volume-lock.js';
import { describeSmbEvent, mergeSmbSettings, parseUserSpec, SmbService } from '../smb/index.js';
import { loadConfig, SERVE_KEYS, type ServeConfig, validateCliSettings } from './config.js';
import { openControl } from './serve-control.js';

export { parseHostPort } from './serve-control.js';

export interface ServeArgs extends ServeConfig {
  config?: string;
  json?: boolean;
  /** Run the REPL in this terminal. */
  repl?: boolean;
  /** `--smb [HOST:]PORT` and `--smb-user NAME:PASSWORD` (src/smb). */
  smbListen?: string;
  smbUsers?: string[];
  /** `--plugin-dir`: extra plugin folders; with a control channel, plugins hear freeze/split/thaw/resync. */
  pluginDirs?: string[];
}

/** Resolves the effective settings: built-in defaults < config file < command line. */
export async function resolveServeConfig(
  args: ServeArgs,
): Promise<Required<Pick<ServeConfig, 'primary' | 'mount'>> & ServeConfig> {
  const fromFile = args.config ? await loadConfig(args.config) : {};
  const cli: Record<string, unknown> = {};
  for (const k of SERVE_KEYS) {
    if (k === 'smb') continue; // merged below from --smb / --smb-user
    if (args[k] !== undefined) cli[k] = args[k];
  }
  const merged = { ...fromFile, ...validateCliSettings(cli) };
  if (!merged.primary)
    throw new TwinError(
      'ETWIN_USAGE',
      'no primary directory: pass --primary DIR or set "primary" in the config',
    );
  if (!merged.mount)
    throw new TwinError('ETWIN_USAGE', 'no mount point: pass --mount DIR or set "mount" in the config');
  if (merged.logLevel !== undefined && !(LOG_LEVELS as readonly string[]).includes(merged.logLevel))
    throw new TwinError(
      'ETWIN_USAGE',
      `--log-level (config "logLevel") must be one of ${LOG_LEVELS.join(', ')}, not "${merged.logLevel}"`,
      { option: '--log-level' },
    );
  merged.smb = mergeSmbSettings(merged.smb, {
    listen: args.smbListen,
    users: args.smbUsers?.map(parseUserSpec),
  });
  return merged as Required<Pick<ServeConfig, 'primary' | 'mount'>> & ServeConfig;
}

/**
 * `twinfs serve`: mounts in the foreground; SIGINT/SIGTERM write everything back and unmount
 * (exit 0). A second signal while shutting down exits at once with status 1.
 */
export async function serve(args: ServeArgs): Promise<number> {
  const cfg = await resolveServeConfig(args);
  // Signal handlers go in before anything is mounted (and long before "mounted" is printed):
  // Node installs a handler only when the first listener is added, and a SIGTERM sent the
  // moment a supervisor sees "mounted" must not find the default action (death, mount left
  // stale). A signal that comes while mounting stops the server as soon as the mount is up.
  let pendingSignal: string | undefined;
  let onStop: ((signal: string) => void) | undefined;
  const onSignal = (signal: string) => {
    if (onStop) return onStop(signal);
    if (pendingSignal) {
      process.stderr.write(`twinfs: ${signal} again, exiting before the mount is up\n`);
      process.exit(1);
    }
    pendingSignal = signal;
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  // With --repl the REPL owns Ctrl-C (it cancels the running command).
  if (!args.repl) process.on('SIGINT', () => onSignal('SIGINT'));
  const out = (event: string, data: Record<string, unknown>, text: string) =>
    process.stdout.write(args.json ? JSON.stringify({ event, ...data }) + '\n' : `twinfs: ${text}\n`);

  // Check the directories before anything is created, then take the volume (primary, mirror,
  // its state) for this process's life, before the journal is read or anything is mounted: a
  // second server on the same volume stops here with ETWIN_VOLUME_LOCKED naming the holder.
  await preflight({ primary: cfg.primary, mount: cfg.mount, mirror: cfg.mirror, force: cfg.force });
  const volumeLock = VolumeLock.acquire({
    primary: cfg.primary,
    mirror: cfg.mirror,
    stateDir: cfg.stateDir ?? defaultStateDir(),
  });
  // The REPL and the status page need the control channel (its tokens, its backup service).
  if ((args.repl || cfg.http) && !cfg.control) cfg.control = '127.0.0.1:0';
  // JSON lines on stdout when it is not a terminal (or with --json); the REPL's terminal only
  // hears of warnings unless asked.
  const log = createServerLog({
    level: (cfg.logLevel as LogLevel | undefined) ?? (args.repl ? 'warn' : 'info'),
    json: args.json || !process.stdout.isTTY,
  });
  // The control channel is checked and bound before anything is mounted: a bad address, TLS
  // file or token file is a coded error with nothing left behind (src/cli/serve-control.ts).
  let controlSetup: Awaited<ReturnType<typeof openControl>>;
  try {
    controlSetup = await openControl(cfg, (m) => process.stderr.write(`twinfs: ${m}\n`));
  } catch (err) {
    volumeLock.release();
    throw err;
  }
  if (controlSetup)
    log.info(
      {
        kind: 'listening',
        control: controlSetup.server.url,
        tokenFile: controlSetup.tokenFile,
        readTokenFile: controlSetup.readTokenFile ?? null,
        http: controlSetup.http?.url ?? null,
      },
      `control channel ${controlSetup.server.url} (token file ${controlSetup.tokenFile})${
        controlSetup.http ? `, status page ${controlSetup.http.url}` : ''
      }`,
    );
  let mirror: MirrorDriver | undefined;
  let fs: TwinFs;
  try {
    mirror = await openMirror(cfg, out, args.json);
    fs = await TwinFs.mount({
      sink: mirror,
      primary: cfg.primary,
      mount: cfg.mount,
      mirror: cfg.mirror,
      force: cfg.force,
      cacheBytes: cfg.cacheMb ? Math.floor(cfg.cacheMb * 1024 * 1024) : undefined,
      writebackMs: cfg.writebackMs,
      writeThrough: cfg.writeThrough,
      flushOnClose: cfg.flushOnClose,
      spillDir: path.join(cfg.stateDir ?? defaultStateDir(), 'spill'),
      ...(cfg.fuse === 3 || cfg.fuse === 2 ? { native: { libfuse: cfg.fuse } } : {}),
    });
  } catch (err) {
    await mirror?.dispose().catch(() => undefined);
    await controlSetup?.dispose().catch(() => undefined);
    volumeLock.release();
    throw err;
  }
  let smbRef: SmbService | undefined;
  const control = controlSetup?.server;
  let service: BackupService | undefined;
  let plugins: { dispose(): Promise<void> } | undefined;
  const observers: Array<{ dispose(): void }> = [];
  const token = controlSetup?.tokens.operatorToken ?? '';
  if (control) {
    service = new BackupService({
      fs,
      mirror,
      maxStallMs: cfg.maxStallMs,
      kernelSyncTimeoutMs: cfg.kernelSyncTimeoutMs,
    });
    plugins = await startPlugins(service, args.pluginDirs, mirror?.deviceId);
    control.attach({
      statusExtras: async () => ({ smb: smbRef ? await smbRef.status() : null }),
      service,
      fs,
      mirror,
    });
    observers.push(
      logServerEvents(log, { control: { onDidControl: control.onDidControl }, service, mirror }),
    );
    const http = controlSetup?.http;
    if (http) {
      const metrics = new ServerMetrics({
        fs,
        service,
        mirror,
        control,
        smbSessions: cfg.smb
          ? async () => (smbRef ? (await smbRef.status()).clients.length : null)
          : undefined,
      });
      const feed = new StatusFeed({
        fs,
        service,
        mirror,
        control: { onDidControl: control.onDidControl },
        smb: cfg.smb ? async () => (smbRef ? await smbRef.status() : null) : undefined,
      });
      observers.push(feed, metrics);
      http.onAuthFailure = (remote) => {
        metrics.httpAuthFailure();
        log.warn(
          { event: 'auth-failed', channel: 'http', remote },
          `wrong token from ${remote} (status page)`,
        );
      };
      http.attach({ feed, metrics });
    }
  }
  const st = fs.status();
  out(
    'mounted',
    {
      primary: fs.primary,
      mount: fs.mountPoint,
      pid: process.pid,
      cacheBytes: st.cache.limitBytes,
      writeThrough: st.writeThrough,
      mirror: mirror ? { deviceId: mirror.deviceId, mirrorRoot: mirror.dataRoot } : null,
      control: control
        ? {
            url: control.url,
            tokenFile: controlSetup!.tokenFile,
            readTokenFile: controlSetup!.readTokenFile ?? null,
          }
        : null,
      http: controlSetup?.http ? { url: controlSetup.http.url } : null,
    },
    `serving ${fs.primary} at ${fs.mountPoint} (pid ${process.pid}, ${
      st.writeThrough ? 'write-through' : `write-back cache ${Math.round(st.cache.limitBytes / 1048576)} MiB`
    })${
      control
        ? `\ntwinfs: control channel ${control.url} (operator token in ${controlSetup!.tokenFile}${
            controlSetup!.readTokenFile ? `, read-only token in ${controlSetup!.readTokenFile}` : ''
          })`
        : ''
    }${controlSetup?.http ? `\ntwinfs: status page ${controlSetup.http.url} (metrics at ${controlSetup.http.url}metrics)` : ''}`,
  );
  // SMB (src/smb): smbd serves the mount once it is up; an SMB failure is reported as an
  // event and the mount goes on serving.
  const smb = cfg.smb
    ? new SmbService({
        settings: cfg.smb,
        sharePath: fs.mountPoint,
        stateDir: path.join(cfg.stateDir ?? defaultStateDir(), 'smb'),
      })
    : undefined;
  smbRef = smb;
  smb?.onEvent((e) => out(e.event, e, describeSmbEvent(e)));
  void smb?.start();

  return new Promise<number>((resolve) => {
    let stopping = false;
    /** cause: why the server stops on its own (its mount was lost); the exit status is then 1. */
    const stop = (signal: string, cause?: TwinError) => {
      if (stopping && cause) return;
      if (stopping) {
        process.stderr.write(`twinfs: ${signal} again, exiting without a clean unmount\n`);
        process.exit(1);
      }
      stopping = true;
      out('stopping', { signal }, `${signal}: writing back cached data and unmounting`);
      for (const o of observers.splice(0)) o.dispose();
      Promise.resolve()
        .then(() => shutdownStep('the control channel', () => controlSetup?.dispose(), STEP_BOUND_MS))
        .then(() => shutdownStep('the backup service', () => service?.dispose(), STEP_BOUND_MS))
        .then(() => shutdownStep('the plugins', () => plugins?.dispose(), STEP_BOUND_MS))
        .then(() => shutdownStep('SMB', () => smb?.dispose(), STEP_BOUND_MS))
        // Not bounded: cached data is written back however long that takes (a second signal
        // exits at once).
        .then(() =>
          shutdownStep(
            'the write-back and unmount',
            () => fs.unmount(),
            undefined,
            () => fs.unmountProgress(),
          ),
        )
        .finally(() => shutdownStep('the mirror', () => mirror?.dispose()))
        // Held until everything is written back and the journal closed: only then may another
        // server take the volume.
        .finally(() => volumeLock.release())
        .then(
          () => {
            out('unmounted', { mount: fs.mountPoint }, `unmounted ${fs.mountPoint}`);
            if (cause) report(cause);
            resolve(cause ? 1 : 0);
          },
          (err) => {
            if (cause) report(cause);
            report(err);
            resolve(1);
          },
        );
    };
    // The coded form every command uses; with --json also as an event line.
    const report = (err: unknown) => {
      for (const e of err instanceof AggregateError ? err.errors : [err]) {
        if (args.json) out('error', { code: codeOf(e), message: messageOf(e) }, '');
        process.stderr.write(`twinfs: error ${codeOf(e)}: ${messageOf(e)}\n`);
      }
    };
    onStop = stop;
    // Someone unmounted the volume behind the server's back (twinfs unmount, fusermount -u):
    // there is nothing left to serve, so write everything back and stop, saying why.
    fs.onDidLoseMount((e) =>
      stop(
        'mount lost',
        new TwinError(
          'ETWIN_MOUNT_LOST',
          `${e.reason}; cached data was written back and the server stopped`,
          { mount: e.mount },
        ),
      ),
    );
    if (pendingSignal) stop(pendingSignal);
    if (args.repl && control) {
      // The REPL owns Ctrl-C (it cancels the running command); leaving the REPL stops the server.
      const url = control.url;
      void import('./operator-repl.js').then(async ({ startOperatorRepl }) => {
        const { operatorConfigFrom } = await import('./operator-config.js');
        const oc = await operatorConfigFrom(args.config).catch(() => ({}) as Record<string, undefined>);
        await startOperatorRepl({
          url,
          token,
          defaults: { catalog: oc.catalog, target: oc.target },
          historyFile: oc.history,
          primary: fs.primary,
        });
        stop('repl exit');
      });
    }
  });
}

/** How long a shutdown step that holds no data (control, service, plugins, SMB) may take. */
const STEP_BOUND_MS = 10_000;
/** After how long a shutdown step still running is told on stderr (and again every period). */
const STEP_NOTICE_MS = 5_000;

/**
 * One step of the shutdown, told on stderr when it takes longer than STEP_NOTICE_MS (a stop
 * that hung said only that it was stopping). With a bound, a step still running then is left
 * behind, said so, and the shutdown goes on, as after a failure of such a step: the volume's
 * write-back and unmount must not wait on a peer's socket or a plugin. `progress` adds where
 * the step is to each notice.
 */
async function shutdownStep(
  what: string,
  run: () => unknown,
  boundMs?: number,
  progress?: () => string,
): Promise<void> {
  const started = Date.now();
  const notice = setInterval(() => {
    const s = Math.round((Date.now() - started) / 1000);
    const where = progress?.();
    process.stderr.write(
      `twinfs: stopping: still waiting for ${what} after ${s} s${where ? ` (${where})` : ''}\n`,
    );
  }, STEP_NOTICE_MS);
  let bound: NodeJS.Timeout | undefined;
  try {
    const step = Promise.resolve().then(run);
    if (boundMs === undefined) {
      await step;
      return;
    }
    const gaveUp = new Promise<'late'>((resolve) => {
      bound = setTimeout(() => resolve('late'), boundMs);
    });
    // A failed step that holds no data is told and passed: it must not cost the unmount.
    const settled = step.then(
      () => 'done' as const,
      (err) => {
        process.stderr.write(`twinfs: stopping: ${what}: ${formatError(err)}\n`);
        return 'done' as const;
      },
    );
    if ((await Promise.race([settled, gaveUp])) === 'late') {
      process.stderr.write(
        `twinfs: stopping: ${what} did not stop within ${boundMs / 1000} s; going on without it\n`,
      );
    }
  } finally {
    clearInterval(notice);
    clearTimeout(bound);
  }
}

/** The mirror driver, when the server has a mirror, with its events reported. */
async function openMirror(
  cfg: ServeConfig & { primary: string },
  out: (event: string, data: Record<string, unknown>, text: string) => void,
  json?: boolean,
): Promise<MirrorDriver | undefined> {
  if (!cfg.mirror) return undefined;
  const mirror = await MirrorDriver.open({
    primary: cfg.primary,
    mirror: cfg.mirror,
    stateDir: cfg.stateDir,
    adopt: cfg.adoptMirror,
  });
  mirror.onDidBreak((e) => out('broken', e, `mirror pair broken: ${e.path} (${e.error})`));
  mirror.onDidChangeState((e) => json && out('state', e, ''));
  // The initial copy and resyncs, for supervisors and tests: at most 4 lines a second per phase.
  let lastProgress = 0;
  mirror.onProgress((p) => {
    if (!json || (!p.done && Date.now() - lastProgress < 250)) return;
    lastProgress = Date.now();
    out('progress', { ...p }, '');
  });
  return mirror;
}

/**
 * The server's plugin host: its plugins hear the backup service's events (onDidFreeze,
 * onDidSplit, onDidThaw, onDidResync), never waited for in the write path. A host that cannot
 * start (unreadable plugin settings) is reported and the server goes on without plugins.
 */
async function startPlugins(
  service: BackupService,
  pluginDirs: string[] | undefined,
  deviceId: string | undefined,
): Promise<{ dispose(): Promise<void> } | undefined> {
  const { createPluginHost, forwardServiceEvents } = await import('../plugins/index.js');
  try {
    const host = await createPluginHost({ pluginDirs });
    const forwarding = forwardServiceEvents(service.onEvent, host, { deviceId });
    await host.activateByEvent('onStartup');
    return {
      async dispose() {
        forwarding.dispose();
        await host.dispose().catch((err) => process.stderr.write(`twinfs: plugins: ${formatError(err)}\n`));
      },
    };
  } catch (err) {
    process.stderr.write(`twinfs: plugins disabled: ${formatError(err)}\n`);
    return undefined;
  }
}

/** Errors of the shutdown path without a code of their own are unmount failures. */
function codeOf(err: unknown): string {
  return err instanceof TwinError ? err.code : 'ETWIN_UNMOUNT_FAILED';
}

function messageOf(err: unknown): string {
  return err instanceof TwinError ? err.message : formatError(err);
}

export { formatError };
