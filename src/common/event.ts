import type { Disposable } from './lifecycle.js';

/** An event is a function that subscribes a listener and returns the subscription. */
export type Event<T> = (
  listener: (e: T) => unknown,
  thisArgs?: unknown,
  disposables?: Disposable[],
) => Disposable;

/**
 * Fires events to listeners. One listener's exception never stops the others; it is handed
 * to `onListenerError` (default: console.error) instead.
 */
export class Emitter<T> {
  private listeners = new Set<(e: T) => unknown>();
  private readonly onListenerError: (err: unknown) => void;

  constructor(options: { onListenerError?: (err: unknown) => void } = {}) {
    this.onListenerError =
      options.onListenerError ?? ((err) => console.error('twinfs: event listener failed:', err));
  }

  readonly event: Event<T> = (listener, thisArgs, disposables) => {
    const bound = thisArgs ? listener.bind(thisArgs) : listener;
    this.listeners.add(bound);
    const sub = { dispose: () => void this.listeners.delete(bound) };
    disposables?.push(sub);
    return sub;
  };

  fire(e: T): void {
    for (const l of [...this.listeners]) {
      try {
        const r = l(e);
        if (r && typeof (r as Promise<unknown>).catch === 'function')
          (r as Promise<unknown>).catch(this.onListenerError);
      } catch (err) {
        this.onListenerError(err);
      }
    }
  }

  get hasListeners(): boolean {
    return this.listeners.size > 0;
  }

  dispose(): void {
    this.listeners.clear();
  }
}
