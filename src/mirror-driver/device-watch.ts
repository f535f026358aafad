import { promises as fsp } from 'node:fs';
import type { MirrorLayout } from './device.js';

/**
 * Notices that the mirror's filesystem went away under a running driver: a lazy unmount, a
 * failed disk detached, another filesystem mounted over the mirror root. Writes into the empty
 * directory left behind would fill the wrong disk, and files missing there would look like
 * mirror lag rather than a lost device. The mirror is the one whose device.json names our device
 * id, on the filesystem (st_dev) it was opened on.
 */
export class DeviceWatch {
  private dev: number | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly layout: MirrorLayout,
    private readonly deviceId: string,
  ) {}

  /** Records the filesystem the mirror is on now (call once the device record is known good). */
  async start(opts: { intervalMs: number; onVanished: (reason: string) => void }): Promise<void> {
    this.dev = (await fsp.stat(this.layout.root)).dev;
    if (opts.intervalMs <= 0) return;
    let reported = false;
    this.timer = setInterval(() => {
      void this.check().then((reason) => {
        // One report per loss; a later check that passes (the device is back) re-arms it.
        if (reason && !reported) opts.onVanished(reason);
        reported = reason !== undefined;
      });
    }, opts.intervalMs);
    this.timer.unref();
  }

  /**
   * Why the mirror is not the device the driver opened, or undefined when it is. A mirror that
   * was remounted (same device.json, another st_dev) counts as vanished: what it holds now is
   * unknown until a repair compared it. Such a repair is allowed: see accept().
   */
  async check(): Promise<string | undefined> {
    let st: { dev: number };
    try {
      st = await fsp.stat(this.layout.root);
    } catch (err) {
      return `the mirror root ${this.layout.root} is gone (${(err as NodeJS.ErrnoException).code})`;
    }
    const id = await this.readDeviceId();
    if (id === undefined)
      return `the mirror's filesystem vanished: ${this.layout.deviceFile} cannot be read (unmounted?)`;
    if (id !== this.deviceId)
      return `the mirror root now holds device ${id}, not ${this.deviceId} (another filesystem mounted there?)`;
    if (this.dev !== undefined && st.dev !== this.dev)
      return `the mirror's filesystem changed under the server (device ${this.dev} became ${st.dev}: remounted?)`;
    return undefined;
  }

  /**
   * For a repair: true when the mirror root holds our device (its filesystem may be a new one,
   * which is then adopted). A repair must never copy into the directory an unmounted mirror left.
   */
  async accept(): Promise<boolean> {
    if ((await this.readDeviceId()) !== this.deviceId) return false;
    this.dev = (await fsp.stat(this.layout.root)).dev;
    return true;
  }

  dispose(): void {
    if (this.timer) clearInterval(this.timer);
  }

  private async readDeviceId(): Promise<string | undefined> {
    try {
      const rec = JSON.parse(await fsp.readFile(this.layout.deviceFile, 'utf8')) as { deviceId?: unknown };
      return typeof rec.deviceId === 'string' ? rec.deviceId : undefined;
    } catch {
      return undefined;
    }
  }
}
