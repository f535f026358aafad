import { parseConfig } from '../common/config-schema.js';
import { TwinError } from '../common/errors.js';
import { z } from '../common/zod.js';

/** One SMB account: a name SMB clients log in with and its password (kept in Samba's passdb). */
export interface SmbUser {
  name: string;
  password: string;
}

/** The `"smb"` block of the serve config (docs/smb.md). */
export interface SmbSettings {
  /** `[HOST:]PORT` smbd listens on; the host defaults to 127.0.0.1 (loopback only). */
  listen: string;
  /** Share name clients connect to (`//HOST/twinfs`). Default `twinfs`. */
  share?: string;
  users?: SmbUser[];
  /** Refuse every change through SMB. */
  readOnly?: boolean;
  /** Let clients in without a password (as the guest account). Off unless asked for. */
  guest?: boolean;
  /**
   * The Unix account every file access runs as (Samba's `force user`). Default: the owner of the
   * mount's root directory, so files keep one owner whichever SMB user wrote them.
   */
  forceUser?: string;
}

/** Settings with the defaults filled in and the listen address parsed. */
export interface ResolvedSmbSettings {
  host: string;
  port: number;
  share: string;
  users: SmbUser[];
  readOnly: boolean;
  guest: boolean;
  forceUser?: string;
}

/** Unix and Samba both accept these; anything else is refused before it reaches useradd or smb.conf. */
const USER_NAME = /^[a-z_][a-z0-9_-]{0,31}$/;
/** Share names go into a section header of smb.conf: no brackets, no line breaks. */
const SHARE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$/;

function bad(where: string, message: string, data: Record<string, unknown> = {}): TwinError {
  return new TwinError('ETWIN_CONFIG', `${where}: ${message}`, data);
}

/** Parses `[HOST:]PORT` (`[::1]:4450` for IPv6); the host defaults to 127.0.0.1. */
export function parseListen(spec: string, where = '--smb'): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d+)$/.exec(spec) ?? /^()()(\d+)$/.exec(spec);
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || !(port >= 1 && port <= 65535))
    throw new TwinError('ETWIN_USAGE', `${where} must be [HOST:]PORT with a port 1-65535, not "${spec}"`);
  return { host: m[1] || m[2] || '127.0.0.1', port };
}

/** Parses `--smb-user NAME:PASSWORD` (the password may contain ':'). */
export function parseUserSpec(spec: string): SmbUser {
  const i = spec.indexOf(':');
  if (i <= 0)
    throw new TwinError('ETWIN_USAGE', `--smb-user must be NAME:PASSWORD, not "${spec.split(':')[0]}…"`);
  const user = { name: spec.slice(0, i), password: spec.slice(i + 1) };
  checkUser(user, '--smb-user');
  return user;
}

function checkUser(u: SmbUser, where: string): void {
  if (!USER_NAME.test(u.name))
    throw bad(
      where,
      `SMB user name "${u.name}" must be lower-case letters, digits, '_' or '-' (at most 32, not starting with a digit or '-')`,
    );
  if (u.password.length === 0 || /[\n\r\0]/.test(u.password))
    throw bad(where, `the password of SMB user "${u.name}" must be non-empty and on one line`);
}

const USER_SHAPE = 'must be {"name": string, "password": string}';
const userSchema = z.strictObject(
  { name: z.string({ error: USER_SHAPE }), password: z.string({ error: USER_SHAPE }) },
  {
    error: (i) => (i.code === 'unrecognized_keys' ? `unknown user setting "${i.keys[0]}"` : USER_SHAPE),
  },
);

const smbSchema = z.strictObject(
  {
    listen: z.string({ error: 'must be a string "[HOST:]PORT"' }).superRefine((v, ctx) => {
      try {
        parseListen(v, '');
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message.trim() });
      }
    }),
    share: z
      .string({ error: 'must be a name of letters, digits, "_", "." or "-"' })
      .regex(SHARE_NAME, { error: 'must be a name of letters, digits, "_", "." or "-"' })
      .optional(),
    users: z
      .array(userSchema, { error: 'must be an array of {name, password}' })
      .superRefine((users, ctx) => {
        const seen = new Set<string>();
        for (const u of users) {
          try {
            checkUser(u, '');
          } catch (err) {
            ctx.addIssue({ code: 'custom', message: (err as Error).message.replace(/^: /, '') });
            return;
          }
          if (seen.has(u.name))
            ctx.addIssue({ code: 'custom', message: `SMB user "${u.name}" is listed twice` });
          seen.add(u.name);
        }
      })
      .optional(),
    readOnly: z.boolean({ error: 'must be a boolean' }).optional(),
    guest: z.boolean({ error: 'must be a boolean' }).optional(),
    forceUser: z
      .string({ error: 'must be a Unix account name' })
      .regex(USER_NAME, { error: 'must be a Unix account name' })
      .optional(),
  },
  { error: (i) => (i.code === 'invalid_type' ? 'must be an object' : undefined) },
);

/** Validates the `"smb"` value of a config file (shape and values, a zod schema); throws ETWIN_CONFIG. */
export function validateSmbSettings(raw: unknown, file = '<config>'): SmbSettings {
  return parseConfig(smbSchema, raw, `config ${file}: "smb"`, { file }, 'smb.');
}

/**
 * Merges the config file's block with the command line (`--smb`, `--smb-user`): the command
 * line's listen address wins; its users are added to (or replace same-named) config users.
 */
export function mergeSmbSettings(
  fromFile: SmbSettings | undefined,
  cli: { listen?: string; users?: SmbUser[] },
): SmbSettings | undefined {
  if (!fromFile && cli.listen === undefined) {
    if (cli.users?.length)
      throw new TwinError('ETWIN_USAGE', '--smb-user needs --smb [HOST:]PORT (or "smb" in the config)');
    return undefined;
  }
  const users = new Map((fromFile?.users ?? []).map((u) => [u.name, u]));
  for (const u of cli.users ?? []) users.set(u.name, u);
  const merged = { ...fromFile, listen: cli.listen ?? fromFile!.listen, users: [...users.values()] };
  // Mistakes in the settings stop `twinfs serve` before it mounts anything.
  resolveSmbSettings(merged);
  return merged;
}

/** Fills in defaults; refuses a share nobody could log in to. */
export function resolveSmbSettings(s: SmbSettings): ResolvedSmbSettings {
  const { host, port } = parseListen(s.listen);
  const r: ResolvedSmbSettings = {
    host,
    port,
    share: s.share ?? 'twinfs',
    users: s.users ?? [],
    readOnly: s.readOnly ?? false,
    guest: s.guest ?? false,
    forceUser: s.forceUser,
  };
  if (r.users.length === 0 && !r.guest)
    throw new TwinError(
      'ETWIN_CONFIG',
      'SMB has no users and guest access is off, so nobody could connect: add --smb-user NAME:PASSWORD or "users" to "smb"',
    );
  return r;
}
