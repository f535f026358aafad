import { createHmac, timingSafeEqual } from 'node:crypto';
import { unwatchFile, watchFile } from 'node:fs';
import { TwinError } from '../common/errors.js';
import { Emitter } from '../common/event.js';
import { loadOrCreateToken, readToken, tokensEqual } from './token.js';

/**
 * What a token may do. `operator`: everything. `read`: requests that only look (status,
 * verify); anything else gets EPROTO_FORBIDDEN.
 */
export type Role = 'operator' | 'read';

export interface TokenStoreOptions {
  /** The operator token's file (created 0600 if missing). */
  operatorFile: string;
  /** The read-only token's file (created 0600 if missing), if there is a read-only role. */
  readFile?: string;
  /** How often the files' stat is polled for a rotation, ms (default 1000; 0: never). */
  pollMs?: number;
  /** Where a failed reload is reported (the token itself is never written anywhere). */
  log?: (msg: string) => void;
}

/**
 * The server's tokens, one per role, re-read when their files change (polled, so a file
 * replaced by rename is seen too) or on reload() (SIGHUP): a rotated token works at once for
 * new connections, the old one stops working; connections already authenticated keep going
 * (a peer in the middle of a backup is not cut off). A reload that finds a bad file (empty,
 * group-readable, gone) keeps the previous token and says why.
 */
export class TokenStore {
  private tokens: Partial<Record<Role, string>> = {};
  private readonly _onDidReload = new Emitter<{ role: Role }>();
  /** A token changed (by a rotation). */
  readonly onDidReload = this._onDidReload.event;
  private watching: string[] = [];

  private constructor(private readonly opts: TokenStoreOptions) {}

  static async open(opts: TokenStoreOptions): Promise<TokenStore> {
    const s = new TokenStore(opts);
    s.tokens.operator = await loadOrCreateToken(opts.operatorFile);
    if (opts.readFile) {
      s.tokens.read = await loadOrCreateToken(opts.readFile);
      s.assertDistinct(s.tokens.operator, s.tokens.read);
    }
    if ((opts.pollMs ?? 1000) > 0) s.watch(opts.pollMs ?? 1000);
    return s;
  }

  /** The operator token (for the in-process REPL of `serve --repl`). */
  get operatorToken(): string {
    return this.tokens.operator!;
  }

  /**
   * The role a presented token grants, or null. Every known token is compared (in constant
   * time), whichever matches, so the time taken does not tell which role was close.
   */
  roleOf(presented: string): Role | null {
    let role: Role | null = null;
    for (const r of ['operator', 'read'] as const) {
      const t = this.tokens[r];
      if (t !== undefined && tokensEqual(presented, t) && role === null) role = r;
    }
    return role;
  }

  /**
   * A value derived from each token (HMAC-SHA256 keyed by the token, over `purpose`): the
   * status page's session cookie. It proves the token without being it, and stops working
   * when the token is rotated.
   */
  derived(purpose: string): Array<{ role: Role; value: string }> {
    const out: Array<{ role: Role; value: string }> = [];
    for (const r of ['operator', 'read'] as const) {
      const t = this.tokens[r];
      if (t !== undefined)
        out.push({ role: r, value: createHmac('sha256', t).update(purpose).digest('base64url') });
    }
    return out;
  }

  /** The role whose derived value (derived()) this is, compared in constant time, or null. */
  roleOfDerived(purpose: string, presented: string): Role | null {
    let role: Role | null = null;
    const p = Buffer.from(presented);
    for (const d of this.derived(purpose)) {
      const v = Buffer.from(d.value);
      if (v.length === p.length && timingSafeEqual(v, p) && role === null) role = d.role;
    }
    return role;
  }

  /** Re-reads both files now (SIGHUP). Resolves with what changed. */
  async reload(): Promise<Role[]> {
    const changed: Role[] = [];
    const files: Array<[Role, string | undefined]> = [
      ['operator', this.opts.operatorFile],
      ['read', this.opts.readFile],
    ];
    const next = { ...this.tokens };
    for (const [role, file] of files) {
      if (!file) continue;
      try {
        next[role] = await readToken(file);
      } catch (err) {
        const e = err as TwinError;
        this.opts.log?.(`${role} token not reloaded, the previous one stays: ${e.code}: ${e.message}`);
      }
    }
    try {
      if (next.read !== undefined) this.assertDistinct(next.operator!, next.read);
    } catch (err) {
      this.opts.log?.(`tokens not reloaded: ${(err as TwinError).code}: ${(err as TwinError).message}`);
      return [];
    }
    for (const [role] of files)
      if (next[role] !== undefined && next[role] !== this.tokens[role]) changed.push(role);
    this.tokens = next;
    for (const role of changed) {
      this.opts.log?.(`${role} token reloaded from its file`);
      this._onDidReload.fire({ role });
    }
    return changed;
  }

  dispose(): void {
    for (const f of this.watching) unwatchFile(f);
    this.watching = [];
    this._onDidReload.dispose();
  }

  private watch(pollMs: number): void {
    for (const f of [this.opts.operatorFile, this.opts.readFile]) {
      if (!f) continue;
      // watchFile polls stat: it sees a file replaced by rename, which fs.watch would lose.
      watchFile(f, { interval: pollMs, persistent: false }, (cur, prev) => {
        if (cur.mtimeMs !== prev.mtimeMs || cur.ino !== prev.ino || cur.size !== prev.size)
          void this.reload();
      });
      this.watching.push(f);
    }
  }

  private assertDistinct(operator: string, read: string): void {
    if (tokensEqual(operator, read))
      throw new TwinError(
        'ETWIN_TOKEN',
        'the read-only token is the same as the operator token: give it its own file and token',
        { file: this.opts.readFile },
      );
  }
}
