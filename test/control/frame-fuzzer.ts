/**
 * A seeded random-frame generator for fuzzing the control protocol's decoders (fast-check is
 * not a dependency; this is the small part of it these tests need). The same seed gives the
 * same frames, so a failure names the seed and the frame index to replay.
 */

/** mulberry32: a small, good-enough 32-bit PRNG. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class FrameFuzzer {
  readonly next: () => number;

  constructor(readonly seed: number) {
    this.next = rng(seed);
  }

  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  pick<T>(xs: readonly T[]): T {
    return xs[this.int(0, xs.length - 1)]!;
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  /** Strings that tend to break parsers and path checks. */
  string(): string {
    return this.pick<() => string>([
      () => '',
      () => '/',
      () => '..',
      () => '/a/../../etc/passwd',
      () => '/f\0x',
      () => 'x'.repeat(this.int(1, 5000)),
      () => '\u{1F600}\u202e\ud800',
      () => '__proto__',
      () => 'constructor',
      () => String(this.next()),
      () => Array.from({ length: this.int(0, 40) }, () => String.fromCharCode(this.int(0, 0xffff))).join(''),
      () =>
        `/${Array.from({ length: this.int(1, 8) }, () => this.pick(['a', '..', '.', '', 'f', 'dir'])).join('/')}`,
    ])();
  }

  number(): number {
    return this.pick([
      0,
      -1,
      1,
      0.5,
      1e300,
      -1e300,
      2 ** 53,
      Number.MAX_SAFE_INTEGER + 2,
      this.int(-1e6, 1e6),
      999,
      1000,
      60_000,
      3_600_001,
    ]);
  }

  /** Any JSON value, nested up to depth. */
  value(depth = 3): unknown {
    const kinds = depth > 0 ? 7 : 5;
    switch (this.int(0, kinds - 1)) {
      case 0:
        return null;
      case 1:
        return this.chance(0.5);
      case 2:
        return this.number();
      case 3:
      case 4:
        return this.string();
      case 5:
        return Array.from({ length: this.int(0, 5) }, () => this.value(depth - 1));
      default: {
        const o: Record<string, unknown> = {};
        for (let i = this.int(0, 5); i > 0; i--) o[this.pick(KEYS)] = this.value(depth - 1);
        return o;
      }
    }
  }

  /** A request that is valid, or nearly: a valid template with one to three mutations. */
  request(): Record<string, unknown> {
    const m: Record<string, unknown> = structuredClone(this.pick(TEMPLATES));
    m.id = this.pick<unknown>([this.int(1, 1e6), `id-${this.int(0, 999)}`, m.id]);
    for (let i = this.int(0, 3); i > 0; i--) {
      const key = this.pick(Object.keys(m).length && this.chance(0.7) ? Object.keys(m) : KEYS);
      switch (this.int(0, 3)) {
        case 0:
          delete m[key];
          break;
        case 1:
          m[key] = this.value(2);
          break;
        case 2:
          if (m.selector && typeof m.selector === 'object')
            (m.selector as Record<string, unknown>)[this.pick(['paths', 'subtree', 'volume', 'x'])] =
              this.value(2);
          else m[key] = this.value(1);
          break;
        default:
          m[this.pick(KEYS)] = this.value(1);
      }
    }
    return m;
  }

  /** One frame as sent on the wire: mostly JSON text, sometimes broken text or binary. */
  frame(): string | Buffer {
    switch (this.int(0, 9)) {
      case 0:
        return Buffer.from(Array.from({ length: this.int(0, 64) }, () => this.int(0, 255)));
      case 1: {
        const text = JSON.stringify(this.request());
        return text.slice(0, this.int(0, text.length));
      }
      case 2:
        return JSON.stringify(this.value(4));
      default:
        return JSON.stringify(this.request());
    }
  }
}

const KEYS = [
  'type',
  'id',
  'version',
  'token',
  'client',
  'selector',
  'paths',
  'subtree',
  'volume',
  'leaseMs',
  'maxStallMs',
  'listItems',
  'backupId',
  'freezeId',
  'timeoutMs',
  'content',
  'result',
  'error',
  'event',
  'data',
  '__proto__',
];

const TEMPLATES: ReadonlyArray<Record<string, unknown>> = [
  { type: 'hello', id: 1, version: 1, token: 'x' },
  { type: 'status', id: 1 },
  { type: 'prepare', id: 1, selector: { paths: ['/nope'] }, leaseMs: 5000 },
  { type: 'prepare', id: 1, selector: { subtree: '/nope' }, listItems: false },
  { type: 'renew', id: 1, backupId: 'bk-x' },
  { type: 'release', id: 1, backupId: 'bk-x' },
  { type: 'freeze', id: 1, selector: { paths: ['/nope'] }, timeoutMs: 1000 },
  { type: 'thaw', id: 1, freezeId: 'fz-x' },
  { type: 'verify', id: 1, content: false },
  { type: 'flush', id: 1 },
  { type: 'bogus', id: 1 },
  // server → client shapes (for the client's decoder)
  { type: 'result', id: 1, result: {} },
  { type: 'error', id: 1, error: { code: 'ETWIN_BUSY', message: 'm' } },
  { type: 'event', event: 'frozen', data: {} },
];
