/**
 * The twinfs error catalogue. Every error a user or a peer can see has a stable code here,
 * documented in docs/errors.md. Filesystem layers speak errno (ENOENT, EEXIST, ...) and are
 * mapped to FUSE's negative errno at one boundary (src/fusefs/errno.ts).
 */
export const ErrorCodes = {
  ETWIN_USAGE: 'bad command-line usage or option value',
  ETWIN_CONFIG: 'the config file is missing, unreadable or invalid',
  ETWIN_MOUNTPOINT_MISSING: 'the mount point does not exist',
  ETWIN_MOUNTPOINT_NOT_DIR: 'the mount point is not a directory',
  ETWIN_MOUNTPOINT_BUSY: 'the mount point is already a mount or in use',
  ETWIN_MOUNTPOINT_NOT_EMPTY: 'the mount point is not empty',
  ETWIN_VOLUME_LOCKED: 'another twinfs server owns this volume (its primary, mirror or state)',
  ETWIN_PRIMARY_MISSING: 'the primary directory does not exist',
  ETWIN_PRIMARY_NOT_WRITABLE: 'the primary directory is not writable',
  ETWIN_OVERLAP: 'primary, mirror and mount directories overlap',
  ETWIN_FUSE_UNAVAILABLE: 'FUSE is not available on this machine',
  ETWIN_MOUNT_FAILED: 'mounting failed',
  ETWIN_UNMOUNT_FAILED: 'unmounting failed',
  ETWIN_NOT_MOUNTED: 'the directory is not a twinfs/FUSE mount',
  ETWIN_MOUNT_LOST:
    'the volume was unmounted behind the server (twinfs unmount, fusermount -u); the server wrote back and stopped',
  ETWIN_PATH_ESCAPE: 'the path escapes the volume root',
  ETWIN_WRITEBACK: 'cached data could not be written to the primary',
  ETWIN_WRITEBACK_SPILLED:
    'cached data could not be written to the primary at shutdown; it is kept in the spill journal and written back at the next start',
  ETWIN_SPILL_REPLAY: 'the spill journal could not be written back to the primary; the volume is not mounted',
  ETWIN_SPILL_RESERVE: 'the state directory cannot hold the space reserved for the spill journal',
  ETWIN_KERNEL_WRITEBACK:
    'the kernel did not write back dirty mmap pages of the mount in time; prepare refused',
  ETWIN_MIRROR_FOREIGN: 'the mirror belongs to another primary or is not a twinfs mirror',
  ETWIN_MIRROR_BROKEN: 'the mirror cannot be written; pairs are BROKEN until repaired',
  ETWIN_SPLIT_CONFLICT: 'the files are already split by another holder',
  ETWIN_UNKNOWN_SPLIT: 'no such split',
  ETWIN_VERIFY_FAILED: 'primary and mirror differ',
  ETWIN_CONTROL_UNREACHABLE: 'the control server cannot be reached',
  ETWIN_CONTROL_CLOSED: 'the control connection closed',
  ETWIN_CONTROL_TIMEOUT: 'the control server did not answer in time',
  ETWIN_PROTOCOL: 'the other side broke the control protocol',
  ETWIN_NO_MIRROR: 'the server has no mirror: start it with --mirror',
  ETWIN_BUSY: 'the files are already being backed up or frozen by another holder',
  ETWIN_STALL_EXCEEDED: 'writes could not be drained, flushed and split within the maximum stall',
  ETWIN_UNKNOWN_BACKUP: 'no such backup (released, expired or never prepared)',
  ETWIN_UNKNOWN_FREEZE: 'no such freeze',
  ETWIN_NOT_FOUND: 'no such file on the volume',
  ETWIN_TOKEN: 'the token file is missing or unreadable',
  ETWIN_TOKEN_PERMISSIONS:
    'the token file can be read or written by group or others (chmod 600 it, like an ssh key)',
  ETWIN_TLS: 'the TLS certificate or key is missing, unreadable, invalid, or one is given without the other',
  ETWIN_CONTROL_LISTEN:
    'the control channel cannot listen on that address (port in use, or address not bindable)',
  ETWIN_HTTP_LISTEN:
    'the status page (--http) cannot listen on its address (in use, or not an address of this host)',
  ETWIN_HTTP_BUSY: 'the status page serves as many live streams as it allows (32); close one',
  ETWIN_INSECURE_BIND:
    'a non-loopback control or status-page address needs TLS (--tls-cert/--tls-key) or --insecure-bind',
  ETWIN_PLUGIN_MANIFEST: 'a plugin manifest (package.json) is invalid',
  ETWIN_PLUGIN_ENGINE: 'a plugin needs another twinfs API version (engines.twinfs)',
  ETWIN_PLUGIN_DUPLICATE: 'a plugin, target or command id is already taken',
  ETWIN_PLUGIN_DEPENDENCY: 'a plugin dependency is missing, failed or cyclic',
  ETWIN_PLUGIN_TIMEOUT: 'a plugin did not answer in time',
  ETWIN_PLUGIN_FAILED: 'a plugin failed; it is recorded against the plugin',
  ETWIN_PLUGIN_DISABLED: 'the plugin is disabled',
  ETWIN_PLUGIN_NOT_FOUND: 'no such plugin or command',
  ETWIN_PLUGIN_COMMAND: 'a plugin command failed',
  ETWIN_PLUGIN_CONFIG: 'a plugin setting is invalid',
  ETWIN_DISPOSED: 'the component was already shut down',
  // backup peer (src/backup-peer)
  ETWIN_CATALOG: 'the backup catalog cannot be opened, read or written',
  ETWIN_CATALOG_LOCKED: 'another twinfs process holds the backup catalog',
  ETWIN_UNKNOWN_SNAPSHOT: 'no such snapshot in the catalog',
  ETWIN_SNAPSHOT_INCOMPLETE: 'the snapshot is not complete (running, failed or abandoned)',
  ETWIN_TARGET_SPEC: 'the backup target spec is malformed or names an unknown target type',
  ETWIN_TARGET_NOT_FOUND: 'no such snapshot or file at the backup target',
  ETWIN_TARGET_TRANSIENT: 'the backup target failed temporarily (retrying may help)',
  ETWIN_TARGET_FAILED: 'the backup target failed',
  ETWIN_MIRROR_ON_MOUNT: 'the mirror path lies on a FUSE mount; the peer reads the mirror, never the mount',
  ETWIN_DEVICE_MISMATCH: 'the local mirror path holds another device than the server names (check mirrorMap)',
  ETWIN_MIRROR_UNREADABLE: 'the split mirror copy cannot be read at the path the peer resolved',
  ETWIN_MIRROR_CHANGED:
    'a split mirror copy differs from what the server announced or changed during the copy',
  ETWIN_SPLIT_LOST: 'the server released the split before the copy finished (lease expired or disconnected)',
  ETWIN_TARGET_HUNG:
    'the backup target took nothing for --target-timeout-sec; the split was released and the run abandoned',
  ETWIN_CHECK_FAILED: 'backup data at the target differs from the catalog',
  ETWIN_SNAPSHOT_EMPTIED:
    'a snapshot holds no files while its parent has some (an empty snapshot an old backup recorded after a lost catalog, or an emptied volume)',
  ETWIN_SOURCE_MISMATCH:
    'a snapshot differs from the split mirror copy it was read from (backup --check-source)',
  ETWIN_RESTORE_FAILED: 'some entries could not be restored',
  ETWIN_BAD_PATTERN:
    'a path pattern (--exclude, --exclude-file, --include, find) is malformed: an unclosed bracket, an empty negation',
  ETWIN_OWN_MOUNT: 'this process serves that mount and must not write into it itself',
  ETWIN_ABORTED: 'the operation was cancelled',
  // backup repository (src/repository, docs/repository.md)
  ETWIN_REPO_NOT_INITIALISED: 'no repository at the target (create one with twinfs init --target T)',
  ETWIN_REPO_FOREIGN: 'the target location holds something that is not a twinfs repository',
  ETWIN_REPO_EXISTS: 'a repository already exists at the target',
  ETWIN_REPO_CREATE_RACE:
    'another process created the repository at the same moment (its config landed first) with other keys: nothing of this backup was stored; run it again',
  ETWIN_REPO_VERSION: 'the repository has a format version this twinfs does not know',
  ETWIN_REPO_PASSWORD:
    'the repository is encrypted and no passphrase was given, or the passphrase is wrong (TWINFS_PASSWORD, TWINFS_PASSWORD_FILE, --password-file)',
  ETWIN_REPO_CORRUPT: 'repository data failed its hash or authentication check',
  ETWIN_REPO_LOCKED: 'another process holds a conflicting lock on the repository',
  ETWIN_REPO_WORKER:
    'a repository worker thread (chunking, hashing, compression, encryption) failed or died; the snapshot is not committed',
  // SMB service (src/smb)
  ETWIN_SMB_NOT_INSTALLED: 'Samba is not installed (smbd, smbpasswd or pdbedit not on PATH)',
  ETWIN_SMB_PORT_BUSY: 'the SMB port is already in use',
  ETWIN_SMB_HUNG: 'smbd stopped answering SMB sessions; it is killed and restarted',
  ETWIN_SMB_START: 'smbd failed to start, to answer, or kept dying',
  ETWIN_SMB_CONFIG: 'the Samba configuration cannot be written or is refused',
  ETWIN_SMB_USER: 'an SMB user cannot be created or given its password',
  ETWIN_INTERNAL: 'internal error',
} as const;

export type TwinErrorCode = keyof typeof ErrorCodes;

/** An error with a literal code and a structured, serialisable payload. */
export class TwinError<D extends Record<string, unknown> = Record<string, unknown>> extends Error {
  override readonly name = 'TwinError';
  constructor(
    readonly code: TwinErrorCode,
    message: string,
    readonly data: D = {} as D,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  toJSON(): { code: TwinErrorCode; message: string; data: D } {
    return { code: this.code, message: this.message, data: this.data };
  }
}

export function isTwinError(err: unknown): err is TwinError {
  return err instanceof TwinError;
}

/** The errno code of a Node fs error (ENOENT, ...) or undefined. */
export function errnoCode(err: unknown): string | undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** An error in one line: `CODE: message` when it has a code. */
export function formatError(err: unknown): string {
  if (err instanceof TwinError) return `${err.code}: ${err.message}`;
  if (err instanceof AggregateError) return err.errors.map(formatError).join('; ');
  const e = err as NodeJS.ErrnoException;
  return e?.code ? `${e.code}: ${e.message}` : String(e?.message ?? err);
}
