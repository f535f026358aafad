// @ts-check
import { S3Client } from '@aws-sdk/client-s3';

// The SDK warns on every process under Node < 22 that its releases after January 2027 will
// need Node 22 (nine lines on stderr of each s3 command). twinfs pins its SDK and supports
// Node 20; the SDK's own switch turns the notice off unless the environment says otherwise.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

/**
 * @typedef {object} S3Settings
 * @property {string} [endpoint]
 * @property {string} [region]
 * @property {boolean} [forcePathStyle]
 * @property {string} [accessKeyId]
 * @property {string} [secretAccessKey]
 * @property {string} [sessionToken]
 * @property {number} maxAttempts
 */

/**
 * An S3 client from the plugin's settings, falling back on the standard AWS environment:
 * AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION, and the SDK's
 * credential chain (AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY [+ AWS_SESSION_TOKEN], AWS_PROFILE,
 * instance roles ...).
 *
 * Checksums are sent only when an operation requires them: SDK releases since early 2025
 * default to CRC32 trailers in aws-chunked bodies, which many S3-compatible stores (and s3rver)
 * reject. Integrity is kept end to end anyway by the sha256 of every file in the manifest.
 * @param {S3Settings} s
 * @param {NodeJS.ProcessEnv} [env]
 */
export function createS3Client(s, env = process.env) {
  const endpoint = s.endpoint || env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL || undefined;
  const region = s.region || env.AWS_REGION || env.AWS_DEFAULT_REGION || 'us-east-1';
  return new S3Client({
    endpoint,
    region,
    forcePathStyle: s.forcePathStyle ?? endpoint !== undefined,
    maxAttempts: s.maxAttempts,
    retryMode: 'standard',
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    ...(s.accessKeyId && s.secretAccessKey
      ? {
          credentials: {
            accessKeyId: s.accessKeyId,
            secretAccessKey: s.secretAccessKey,
            ...(s.sessionToken ? { sessionToken: s.sessionToken } : {}),
          },
        }
      : {}),
  });
}

const TRANSIENT_NAMES = new Set([
  'TimeoutError',
  'RequestTimeout',
  'RequestTimeoutException',
  'InternalError',
  'ServiceUnavailable',
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'TooManyRequestsException',
  'RequestLimitExceeded',
  'BandwidthLimitExceeded',
]);
const TRANSIENT_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ETIMEDOUT',
  'EPIPE',
  'EAI_AGAIN',
  'ENOTFOUND',
  'EHOSTUNREACH',
  'ENETUNREACH',
]);
const AUTH_NAMES = new Set(['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'ExpiredToken']);

/**
 * Maps an SDK or network error to the target contract, at the plugin's boundary: 404s are
 * not-found, throttling / 5xx / network failures are transient (the SDK already retried them
 * maxAttempts times; the peer may retry the whole file), everything else is permanent.
 * @param {import('twinfs').TwinfsApi['errors']} errors
 * @param {unknown} err
 * @param {string} what
 * @returns {Error}
 */
export function s3Error(errors, err, what) {
  const e = /** @type {any} */ (err);
  if (e && typeof e.code === 'string' && e.code.startsWith('ETWIN_')) return e;
  const name = String(e?.name ?? e?.Code ?? '');
  const status = Number(e?.$metadata?.httpStatusCode ?? 0);
  const msg = `${what}: ${name ? `${name}: ` : ''}${e?.message ?? String(err)}`;
  if (name === 'NoSuchBucket')
    return errors.failed(`${what}: the bucket does not exist (${e?.message ?? name})`);
  if (name === 'NoSuchKey' || name === 'NotFound' || status === 404) return errors.notFound(msg);
  if (AUTH_NAMES.has(name) || status === 403)
    return errors.failed(
      `${msg} (check the credentials: plugin settings or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)`,
    );
  if (
    TRANSIENT_NAMES.has(name) ||
    TRANSIENT_CODES.has(String(e?.code ?? '')) ||
    status === 429 ||
    status >= 500 ||
    e?.$retryable
  )
    return errors.transient(msg);
  return errors.failed(msg);
}
