// @ts-check
import { spawn } from 'node:child_process';

/**
 * A long-lived `sqlite3` shell driven over stdin: each step ends with a `.print` marker whose
 * echo on stdout says the step is done; `-bail` makes any SQL error end the process, which
 * rejects the pending step with the shell's message. A separate process (not an in-process
 * binding) on purpose: the database lives on the twinfs mount, which the same Node process
 * may be serving, and a synchronous SQLite call there would block the very event loop that
 * must answer its FUSE requests.
 */
export class SqliteShell {
  /**
   * @param {string} binary
   * @param {string} file
   */
  constructor(binary, file) {
    this.file = file;
    this.proc = spawn(binary, ['-batch', '-bail', file], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.out = '';
    this.err = '';
    this.seq = 0;
    /** @type {Promise<number | null>} */
    this.exited = new Promise((resolve) => {
      this.proc.on('close', (code) => resolve(code));
      this.proc.on('error', (e) => {
        this.err += `${e.message}\n`;
        resolve(null);
      });
    });
    this.proc.stdout.setEncoding('utf8').on('data', (d) => {
      this.out += d;
    });
    this.proc.stderr.setEncoding('utf8').on('data', (d) => {
      this.err += d;
    });
    this.proc.stdin.on('error', () => undefined);
  }

  /**
   * Runs shell input; resolves with what it printed, rejects if the shell dies first.
   * @param {string} input SQL and dot-commands, one per line
   * @returns {Promise<string>}
   */
  run(input) {
    const marker = `@@twinfs-step-${++this.seq}@@`;
    const start = this.out.length;
    return new Promise((resolve, reject) => {
      let settled = false;
      const check = () => {
        const at = this.out.indexOf(`${marker}\n`, start);
        if (at < 0 || settled) return;
        settled = true;
        this.proc.stdout.off('data', check);
        resolve(this.out.slice(start, at));
      };
      // Listeners run in order: the buffering one (added first) has already appended the data.
      this.proc.stdout.on('data', check);
      this.exited.then((code) => {
        if (settled) return;
        settled = true;
        this.proc.stdout.off('data', check);
        reject(new Error(`sqlite3 on ${this.file} stopped (${code}): ${this.err.trim() || 'no message'}`));
      });
      this.proc.stdin.write(`${input}\n.print ${marker}\n`);
    });
  }

  /** Ends the shell: a still-open transaction is rolled back by SQLite when the connection closes. */
  async close() {
    this.proc.stdin.end('.quit\n');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(timer);
  }
}

/**
 * Quotes a file name for a dot-command argument.
 * @param {string} file
 */
export function dotArg(file) {
  if (file.includes("'") || file.includes('\n'))
    throw new Error(`cannot pass ${JSON.stringify(file)} to the sqlite3 shell`);
  return `'${file}'`;
}
