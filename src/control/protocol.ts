import { z } from '../common/zod.js';

/**
 * The twinfs control protocol, version 1: JSON text messages over a websocket. This module is
 * the one schema; the server validates every request with it and the client validates every
 * reply and event. Documented in docs/protocol.md.
 */
export const PROTOCOL_VERSION = 1;
/** Largest message either side accepts, bytes. */
/** The request types the server answers (requestSchema's discriminators). */
export const REQUEST_TYPES: ReadonlySet<string> = new Set([
  'hello',
  'status',
  'prepare',
  'renew',
  'release',
  'freeze',
  'thaw',
  'verify',
  'repair',
  'flush',
  'report',
  'changes',
]);

export const MAX_MESSAGE_BYTES = 1024 * 1024;

/** Error code of a selector path with a '..' component (the issue carries it in params.code). */
export const PATH_ESCAPE = 'ETWIN_PATH_ESCAPE';

const volumePath = z
  .string()
  .min(1)
  .max(4096)
  .refine((p) => !p.includes('\0'), 'path contains a NUL byte')
  .refine((p) => !p.split('/').includes('..'), {
    message: 'path escapes the volume root (..)',
    params: { code: PATH_ESCAPE },
  });

const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

/**
 * A peer's report on the copy of a backup it prepared (request `report`): what it copies to,
 * how far it is, and at the end its outcome. Only told on to whoever watches the server.
 */
export const backupReportSchema = z.lazy(() =>
  z
    .object({
      /** The target spec (dir:/backups, s3://bucket/prefix). */
      target: z.string().max(1024),
      snapshotId: z.string().max(200).optional(),
      phase: z.enum(['copy', 'commit', 'done']),
      files: count,
      filesTotal: count,
      bytes: count,
      bytesTotal: count,
      copiedBytes: count,
      outcome: z.enum(['ok', 'failed']).optional(),
      /** The coded error of a failed run. */
      error: z
        .object({ code: z.string().max(100), message: z.string().max(2000) })
        .strict()
        .optional(),
    })
    .strict(),
);
export type BackupReport = z.infer<typeof backupReportSchema>;

export const selectorSchema = z
  .object({
    paths: z.array(volumePath).max(10_000).optional(),
    subtree: volumePath.optional(),
    volume: z.boolean().optional(),
  })
  .strict()
  .refine(
    (s) =>
      [s.paths !== undefined && s.paths.length > 0, s.subtree !== undefined, s.volume === true].filter(
        Boolean,
      ).length === 1,
    {
      message: 'name exactly one of: paths (non-empty), subtree, volume',
    },
  );
export type SelectorMsg = z.infer<typeof selectorSchema>;

/** A change generation of the server's change record; comparable only within one log. */
export const generationSchema = z
  .object({ log: z.string().min(1).max(100), generation: z.number().int().min(0) })
  .strict();
export type GenerationMsg = z.infer<typeof generationSchema>;

/**
 * What changed in the selection since the prepare's `since`, as the server's change record
 * vouches. A file not in `changed` and not under any of `trees` is unchanged since that split,
 * unless `unknown` is set: then nothing is vouched for (everything before generation
 * unknown.since is unknown to the server: an unclean start, a lost record, too many changes).
 */
export const changesSchema = z.object({
  since: z.number(),
  unknown: z.object({ since: z.number(), reason: z.string() }).optional(),
  changed: z.array(z.string()),
  trees: z.array(z.string()),
  /** Paths removed since (a path created again since is in `changed` too). */
  deleted: z.array(z.string()).optional(),
  /** Renames since, oldest first (both names are in `trees` as well). */
  renamed: z.array(z.object({ from: z.string(), to: z.string() })).optional(),
  /**
   * Changed files whose data changed through writes and truncations alone: the byte ranges
   * [start, end) that may differ (end 2^53-1: to the end of the file). A changed file not
   * listed must be compared whole; an empty list: only its metadata changed.
   */
  ranges: z
    .array(z.object({ path: z.string(), ranges: z.array(z.tuple([z.number(), z.number()])) }))
    .optional(),
  /** Set when the answer goes on: send `changes` with this cursor for the next page. */
  more: z.string().optional(),
});
export type ChangesMsg = z.infer<typeof changesSchema>;

const id = z.union([z.string().min(1).max(100), z.number().int()]);
/** A split's lease, ms (prepare and renew). */
const leaseMs = z
  .number()
  .int()
  .min(1000)
  .max(24 * 3600_000)
  .optional();

export const requestSchema = z.lazy(() =>
  z.discriminatedUnion('type', [
    z
      .object({
        type: z.literal('hello'),
        id,
        version: z.number().int(),
        token: z.string().max(1024),
        client: z.string().max(200).optional(),
      })
      .strict(),
    z.object({ type: z.literal('status'), id }).strict(),
    z
      .object({
        type: z.literal('prepare'),
        id,
        selector: selectorSchema,
        /** How long the split may be held without renew, ms. */
        leaseMs,
        /** Override the server's maximum write stall for this prepare (may only be lower). */
        maxStallMs: z.number().int().min(1).max(60_000).optional(),
        /**
         * false: no item list for a subtree or volume (items [], itemsComplete false): the peer
         * walks the mirror itself. Default true. A paths selection is always listed.
         */
        listItems: z.boolean().optional(),
        /**
         * The generation of the previous snapshot's split (its prepare reply's `generation`): the
         * reply then says which files of the selection changed since (`changes`).
         */
        since: generationSchema.optional(),
      })
      .strict(),
    z
      .object({
        type: z.literal('renew'),
        id,
        backupId: z.string().max(200),
        leaseMs,
      })
      .strict(),
    z.object({ type: z.literal('release'), id, backupId: z.string().max(200) }).strict(),
    z
      .object({
        type: z.literal('report'),
        id,
        backupId: z.string().max(200),
        report: backupReportSchema,
      })
      .strict(),
    z
      .object({
        type: z.literal('freeze'),
        id,
        selector: selectorSchema,
        timeoutMs: z.number().int().min(100).max(3600_000).optional(),
      })
      .strict(),
    z.object({ type: z.literal('thaw'), id, freezeId: z.string().max(200) }).strict(),
    z.object({ type: z.literal('verify'), id, content: z.boolean().optional() }).strict(),
    z.object({ type: z.literal('repair'), id }).strict(),
    z.object({ type: z.literal('flush'), id }).strict(),
    /** The next page of a prepare's `changes` (its `more` cursor), while the backup is held. */
    z
      .object({ type: z.literal('changes'), id, backupId: z.string().max(200), cursor: z.string().max(20) })
      .strict(),
  ]),
);
export type Request = z.infer<typeof requestSchema>;
export type RequestType = Request['type'];

export const itemSchema = z.object({
  path: z.string(),
  /** Path of the frozen copy relative to mirrorRoot. */
  mirrorPath: z.string(),
  type: z.enum(['file', 'dir', 'symlink', 'fifo', 'other']),
  size: z.number(),
  mtime: z.number(),
  mode: z.number(),
  uid: z.number(),
  gid: z.number(),
  ino: z.number().optional(),
  nlink: z.number().optional(),
  target: z.string().optional(),
});
export type Item = z.infer<typeof itemSchema>;

export const prepareResultSchema = z.object({
  backupId: z.string(),
  deviceId: z.string(),
  mirrorRoot: z.string(),
  selector: selectorSchema,
  items: z.array(itemSchema),
  /** False when the selection held more items than a reply carries: walk mirrorRoot instead. */
  itemsComplete: z.boolean(),
  stallMs: z.number(),
  leaseMs: z.number(),
  expiresAt: z.number(),
  /** The change record's generation at the split: pass it as `since` to the next prepare. */
  generation: generationSchema.optional(),
  /** Present when the prepare gave `since`. */
  changes: changesSchema.optional(),
});
export type PrepareResult = z.infer<typeof prepareResultSchema>;

/** A selection as the server reports it (status): its internal form, subtrees included. */
export const selectionSchema = z.lazy(() =>
  z.looseObject({
    paths: z.array(z.string()).optional(),
    subtree: z.string().optional(),
    subtrees: z.array(z.string()).optional(),
    volume: z.boolean().optional(),
  }),
);

/**
 * The replies the operator commands read. Loose objects: a newer server may add fields; what
 * the commands use is checked (a reply that lacks it is ETWIN_PROTOCOL, not a crash later).
 */
export const statusResultSchema = z.lazy(() =>
  z.looseObject({
    fs: z.looseObject({
      primary: z.string(),
      mount: z.string(),
      writeThrough: z.boolean(),
      cache: z.looseObject({
        dirtyBytes: z.number(),
        limitBytes: z.number(),
        dirtyFiles: z.number(),
        openFiles: z.number(),
        writeErrors: z.number(),
      }),
      mountLost: z.string().optional(),
    }),
    mirror: z
      .looseObject({
        deviceId: z.string(),
        mirrorRoot: z.string(),
        state: z.string(),
        splits: z.array(
          z.looseObject({
            splitId: z.string(),
            selector: selectionSchema,
            trackedBytes: z.number(),
            trackedFiles: z.number(),
          }),
        ),
        broken: z.array(z.string()),
        brokenReasons: z.record(z.string(), z.string()).optional(),
        queueLength: z.number(),
      })
      .nullable(),
    backup: z.looseObject({
      maxStallMs: z.number(),
      stall: z.looseObject({
        prepares: z.number(),
        failedPrepares: z.number(),
        maxStallMs: z.number(),
        lastStallMs: z.number().nullable(),
        recentMs: z.array(z.number()).optional(),
        inhibitor: z.looseObject({ held: z.number(), maxStallMs: z.number() }).nullable().optional(),
      }),
      backups: z.array(
        z.looseObject({ backupId: z.string(), selector: selectionSchema, expiresAt: z.number() }),
      ),
      freezes: z.array(z.looseObject({ freezeId: z.string(), selector: selectionSchema, since: z.number() })),
    }),
    smb: z
      .looseObject({
        state: z.string().nullish(),
        running: z.boolean().nullish(),
        url: z.string().nullish(),
        port: z.number().nullish(),
        clients: z.array(z.unknown()).nullish(),
        restarts: z.number().nullish(),
        lastError: z.looseObject({ code: z.string(), message: z.string() }).nullable().optional(),
      })
      .nullable()
      .optional(),
  }),
);
export type StatusResult = z.infer<typeof statusResultSchema>;

export const freezeResultSchema = z.lazy(() =>
  z.looseObject({
    freezeId: z.string(),
    flushedMs: z.number(),
    timeoutMs: z.number(),
  }),
);
export const thawResultSchema = z.lazy(() => z.looseObject({ freezeId: z.string(), heldMs: z.number() }));
export const releaseResultSchema = z.looseObject({
  backupId: z.string(),
  bytesCopied: z.number(),
  entries: z.number(),
  ms: z.number(),
});
export const renewResultSchema = z.looseObject({ backupId: z.string(), expiresAt: z.number() });
export const verifyResultSchema = z.lazy(() =>
  z.looseObject({
    ok: z.boolean(),
    checked: z.number(),
    skipped: z.number(),
    differences: z.array(
      z.looseObject({
        path: z.string(),
        kind: z.string(),
        primary: z.union([z.string(), z.number()]).optional(),
        mirror: z.union([z.string(), z.number()]).optional(),
      }),
    ),
  }),
);
export const repairResultSchema = z.lazy(() =>
  z.looseObject({
    bytes: z.number(),
    entries: z.number(),
    remaining: z.array(z.string()),
    reasons: z.record(z.string(), z.string()),
  }),
);
export const flushResultSchema = z.lazy(() => z.looseObject({ flushed: z.literal(true) }));

/** Each request type's reply schema: ControlClient.call() validates against it. */
export const replySchemas = {
  hello: z.lazy(() => helloResultSchema),
  status: statusResultSchema,
  prepare: z.lazy(() => prepareResultSchema),
  renew: renewResultSchema,
  release: releaseResultSchema,
  freeze: freezeResultSchema,
  thaw: thawResultSchema,
  verify: verifyResultSchema,
  repair: repairResultSchema,
  flush: flushResultSchema,
} as const;
export type ReplyOf<T extends keyof typeof replySchemas> = z.infer<(typeof replySchemas)[T]>;

export const errorSchema = z.object({
  code: z.string(),
  message: z.string(),
  data: z.record(z.string(), z.unknown()).optional(),
});
export type ErrorPayload = z.infer<typeof errorSchema>;

export const serverMessageSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('result'), id, result: z.unknown() }),
  z.object({ type: z.literal('error'), id: id.nullable(), error: errorSchema }),
  z.object({ type: z.literal('event'), event: z.string(), data: z.unknown() }),
]);
export type ServerMessage = z.infer<typeof serverMessageSchema>;

export const helloResultSchema = z.object({
  version: z.number(),
  server: z.string(),
  deviceId: z.string().nullable(),
  mirrorRoot: z.string().nullable(),
  /** What the token may do: operator (everything) or read (status, verify). */
  role: z.enum(['operator', 'read']).optional(),
});
export type HelloResult = z.infer<typeof helloResultSchema>;

/** Server events pushed to every authenticated connection. */
export const EVENTS = [
  'frozen',
  'thawed',
  'split',
  'prepare-failed',
  'resynced',
  'broken',
  'released',
  'lease-expired',
  'state',
  'progress',
  'backup-progress',
  'backup-done',
  'repaired',
] as const;
export type EventName = (typeof EVENTS)[number];

/** Stable error codes of the protocol (in addition to the ETWIN_* catalogue). */
export const ProtocolErrors = {
  EPROTO_MALFORMED: 'the message is not valid JSON or does not match the schema',
  EPROTO_TOO_LARGE: 'the message exceeds the size limit',
  EPROTO_VERSION: 'unsupported protocol version',
  EPROTO_AUTH: 'missing or wrong token',
  EPROTO_NOT_AUTHENTICATED: 'send hello first',
  EPROTO_UNKNOWN_TYPE: 'unknown request type',
  EPROTO_FORBIDDEN:
    "the token's role does not allow this request (a read-only token asked for an operator request)",
  EPROTO_RATE_LIMITED:
    'too many requests on this connection (per-second rate or requests in flight); slow down',
} as const;

/** Formats zod issues into one readable line. */
export function describeIssues(err: z.ZodError): string {
  return err.issues
    .slice(0, 3)
    .map((i) => `${i.path.length ? i.path.join('.') + ': ' : ''}${i.message}`)
    .join('; ');
}
