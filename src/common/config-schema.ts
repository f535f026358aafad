import { TwinError } from './errors.js';
import { z } from './zod.js';

/**
 * zod schemas for the config files (serve, operator, smb) and one way to report what is wrong
 * with one: ETWIN_CONFIG, `WHERE: "key" must be ...` or `WHERE: unknown setting "key"`, with
 * the key in the error's data.
 */

/** A value that must be a JSON object (its keys are checked by the schema). */
export const objectOf = <T extends z.core.$ZodLooseShape>(shape: T) =>
  z.strictObject(shape, { error: (i) => (i.code === 'invalid_type' ? 'must be an object' : undefined) });

export const configString = (what = 'a string') => z.string({ error: `must be ${what}` });
export const configBoolean = z.boolean({ error: 'must be a boolean' });
/** A positive finite number (NaN and 0 are refused as not positive). */
export const configPositive = z
  .custom<number>((v) => typeof v === 'number', { error: 'must be a number', abort: true })
  .refine((v) => Number.isFinite(v) && v > 0, { error: 'must be a positive number' });

/** Parses raw with schema; the first problem becomes ETWIN_CONFIG naming its key. */
export function parseConfig<T extends z.ZodType>(
  schema: T,
  raw: unknown,
  where: string,
  data: Record<string, unknown> = {},
  keyPrefix = '',
): z.infer<T> {
  const r = schema.safeParse(raw);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const at = issue.path.map(String);
  if (issue.code === 'unrecognized_keys' && issue.message.startsWith('unknown '))
    throw new TwinError('ETWIN_CONFIG', `${where}: ${issue.message}`, { ...data });
  if (issue.code === 'unrecognized_keys') {
    const key = [...at, issue.keys[0]!].join('.');
    throw new TwinError('ETWIN_CONFIG', `${where}: unknown setting "${key}"`, {
      ...data,
      key: keyPrefix + key,
    });
  }
  const key = at.join('.');
  throw new TwinError('ETWIN_CONFIG', `${where}: ${key ? `"${key}" ` : ''}${issue.message}`, {
    ...data,
    ...(key && { key: keyPrefix + key }),
  });
}
