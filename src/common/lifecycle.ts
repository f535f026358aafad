/** A resource that can be released. Everything that holds a resource is one. */
export interface Disposable {
  dispose(): void | Promise<void>;
}

export function toDisposable(fn: () => void | Promise<void>): Disposable {
  let done = false;
  return {
    dispose() {
      if (done) return;
      done = true;
      return fn();
    },
  };
}

/**
 * Holds disposables and releases them all at once, in reverse order of registration.
 * Disposal goes on past a failing item; every failure is reported at the end as one AggregateError.
 */
export class DisposableStore implements Disposable {
  private readonly items: Disposable[] = [];
  private disposed = false;

  add<T extends Disposable>(item: T): T {
    if (this.disposed) {
      void item.dispose();
      return item;
    }
    this.items.push(item);
    return item;
  }

  get isDisposed(): boolean {
    return this.disposed;
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    const errors: unknown[] = [];
    while (this.items.length > 0) {
      const item = this.items.pop()!;
      try {
        await item.dispose();
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, `${errors.length} disposables failed`);
  }
}

/** Base class for components: `this._register(x)` ties x's lifetime to the component's. */
export abstract class DisposableBase implements Disposable {
  protected readonly _store = new DisposableStore();
  protected _register<T extends Disposable>(item: T): T {
    return this._store.add(item);
  }
  dispose(): Promise<void> {
    return this._store.dispose();
  }
}
