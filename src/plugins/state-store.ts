import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

/** A small persistent key-value store (one JSON file), written atomically on each update. */
export class StateStore {
  private data: Record<string, unknown> = {};
  private loaded = false;
  private writing: Promise<void> = Promise.resolve();

  constructor(private readonly file: string) {}

  async load(): Promise<void> {
    if (this.loaded) return;
    try {
      this.data = JSON.parse(await fsp.readFile(this.file, 'utf8'));
    } catch {
      this.data = {};
    }
    this.loaded = true;
  }

  get<T>(key: string, fallback?: T): T | undefined {
    return (key in this.data ? this.data[key] : fallback) as T | undefined;
  }

  keys(): string[] {
    return Object.keys(this.data);
  }

  update(key: string, value: unknown): Promise<void> {
    if (value === undefined) delete this.data[key];
    else this.data[key] = value;
    const text = JSON.stringify(this.data, null, 2);
    this.writing = this.writing.then(async () => {
      await fsp.mkdir(path.dirname(this.file), { recursive: true });
      const tmp = `${this.file}.tmp`;
      await fsp.writeFile(tmp, text);
      await fsp.rename(tmp, this.file);
    });
    return this.writing;
  }
}
