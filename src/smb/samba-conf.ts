import * as path from 'node:path';
import { TwinError } from '../common/errors.js';
import type { ResolvedSmbSettings } from './settings.js';

/** Where one SmbService keeps everything Samba writes: one directory, nothing system-wide. */
export interface SambaLayout {
  root: string;
  conf: string;
  private: string;
  lock: string;
  state: string;
  cache: string;
  pid: string;
  ncalrpc: string;
  log: string;
  logFile: string;
  passdb: string;
}

export function sambaLayout(root: string): SambaLayout {
  const r = path.resolve(root);
  return {
    root: r,
    conf: path.join(r, 'smb.conf'),
    private: path.join(r, 'private'),
    lock: path.join(r, 'lock'),
    state: path.join(r, 'state'),
    cache: path.join(r, 'cache'),
    pid: path.join(r, 'run'),
    ncalrpc: path.join(r, 'ncalrpc'),
    log: path.join(r, 'log'),
    logFile: path.join(r, 'log', 'smbd.log'),
    passdb: path.join(r, 'private', 'passdb.tdb'),
  };
}

/**
 * Samba keeps unix sockets under the lock and ncalrpc directories (lock/msg.sock/PID,
 * ncalrpc/np/NAME); a socket path has at most 107 bytes, and smbd fails obscurely past it.
 */
const MAX_SOCKET_DIR = 80;

/**
 * smb.conf values run to the end of the line; `%` starts a substitution (%u, %m, ...) in most of
 * them and a trailing `\` continues the line. Paths with those are refused rather than escaped.
 */
export function checkConfPath(p: string, what: string): void {
  if (/[\n\r%]/.test(p) || p.endsWith('\\') || p !== p.trim())
    throw new TwinError(
      'ETWIN_SMB_CONFIG',
      `${what} ${JSON.stringify(p)} cannot go into smb.conf (no '%', line breaks, trailing '\\' or blanks)`,
      { path: p },
    );
}

export interface ConfInput {
  layout: SambaLayout;
  settings: ResolvedSmbSettings;
  /** The directory the share serves (the twinfs mount point). */
  sharePath: string;
  /** Unix account every file access runs as (`force user`). */
  forceUser: string;
}

/** Renders the whole smb.conf: one standalone server, one share, every path inside the layout. */
export function renderSmbConf({ layout: l, settings: s, sharePath, forceUser }: ConfInput): string {
  for (const [p, what] of [
    [l.root, 'the SMB state directory'],
    [sharePath, 'the mount point'],
  ] as const)
    checkConfPath(p, what);
  if (l.lock.length > MAX_SOCKET_DIR || l.ncalrpc.length > MAX_SOCKET_DIR)
    throw new TwinError(
      'ETWIN_SMB_CONFIG',
      `the SMB state directory ${l.root} is too deep for Samba's unix sockets: use a --state-dir of at most ${MAX_SOCKET_DIR - 20} characters`,
      { path: l.root },
    );
  const anyAddress = s.host === '0.0.0.0' || s.host === '::';
  const lines = [
    '# Written by twinfs (src/smb/samba-conf.ts) at every start of `twinfs serve --smb`; edits are lost.',
    '[global]',
    '  server role = standalone server',
    '  workgroup = WORKGROUP',
    '  netbios name = TWINFS',
    '  server string = twinfs',
    '  # Everything Samba keeps lives below this directory; no system-wide file is read or written.',
    `  passdb backend = tdbsam:${l.passdb}`,
    `  private dir = ${l.private}`,
    `  lock directory = ${l.lock}`,
    `  state directory = ${l.state}`,
    `  cache directory = ${l.cache}`,
    `  pid directory = ${l.pid}`,
    `  ncalrpc dir = ${l.ncalrpc}`,
    `  log file = ${l.logFile}`,
    '  max log size = 1000',
    '  log level = 1',
    '  # One address and port, no NetBIOS; SMB2 and later only.',
    ...(anyAddress
      ? ['  bind interfaces only = no']
      : [`  interfaces = ${s.host}`, '  bind interfaces only = yes']),
    `  smb ports = ${s.port}`,
    '  disable netbios = yes',
    '  server min protocol = SMB2_10',
    '  # Nothing but the one share below.',
    '  load printers = no',
    '  printing = bsd',
    '  printcap name = /dev/null',
    '  disable spoolss = yes',
    '  usershare path =',
    '  registry shares = no',
    '  # No anonymous sessions and no guest fallback unless the config asks for guest access.',
    `  restrict anonymous = ${s.guest ? 0 : 2}`,
    `  map to guest = ${s.guest ? 'bad user' : 'never'}`,
    '  guest account = nobody',
    '  idmap config * : backend = tdb',
    '  idmap config * : range = 3000-7999',
    '  # libfuse2 has neither leases nor flock: Samba must not ask the kernel for them on the mount.',
    '  kernel oplocks = no',
    '  kernel share modes = no',
    '',
    `[${s.share}]`,
    `  path = ${sharePath}`,
    '  comment = twinfs volume',
    `  read only = ${s.readOnly ? 'yes' : 'no'}`,
    `  guest ok = ${s.guest ? 'yes' : 'no'}`,
    ...(s.guest ? [] : [`  valid users = ${s.users.map((u) => u.name).join(' ')}`]),
    '  # Every access runs as one Unix account: files keep one owner on the primary and the mirror.',
    `  force user = ${forceUser}`,
    '  # A client flush becomes fsync, which writes the file back through the cache to the primary.',
    '  strict sync = yes',
    '  # DOS attributes and creation times go to user.DOSATTRIB and EAs to user.* xattrs, which',
    '  # twinfs stores on the primary and mirrors; Unix permission bits are not abused for them.',
    '  store dos attributes = yes',
    '  ea support = yes',
    '  map archive = no',
    '  map hidden = no',
    '  map system = no',
    '  create mask = 0644',
    '  directory mask = 0755',
    '  # libfuse renames a file unlinked while open to .fuse_hidden*: clients never see those.',
    '  veto files = /.fuse_hidden*/',
    '  delete veto files = no',
    '',
  ];
  return lines.join('\n');
}
