import { describe, expect, it } from 'vitest';
import { twinfs } from '../repl/fixtures.js';

/**
 * What an operator sees of the s3 target on the command line: the reason a bucket name is
 * refused, and one coded line for an unreachable store — not the SDK's nine-line notice about
 * Node versions on every command.
 */
describe('s3 target on the command line', () => {
  // Nothing listens on port 1: the target's first request fails at once.
  const env = {
    AWS_ENDPOINT_URL: 'http://127.0.0.1:1',
    AWS_ACCESS_KEY_ID: 'a',
    AWS_SECRET_ACCESS_KEY: 'b',
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: undefined,
    TWINFS_CONFIG: undefined,
  };
  const backup = (spec: string) =>
    twinfs(['backup', '--target', spec, '--server', 'ws://127.0.0.1:1', '--token-file', '/dev/null'], {
      env,
      timeoutMs: 60_000,
    });

  it('an unreachable store: one coded line, no SDK notice', async () => {
    const r = await backup('s3:abc/x');
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toEqual([
      expect.stringMatching(/^twinfs: error ETWIN_TARGET_TRANSIENT: s3: cannot reach bucket abc: /),
    ]);
  }, 90_000);

  it('a bucket name that is too short is refused with the reason', async () => {
    const r = await backup('s3:ab/x');
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      'twinfs: error ETWIN_TARGET_FAILED: s3: "ab" is not a bucket name: it is 2 character(s) long; a bucket name has 3 to 63 (s3:BUCKET/PREFIX)\n',
    );
  }, 90_000);
});
