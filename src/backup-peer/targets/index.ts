import { TwinError } from '../../common/errors.js';
import type { BackupTarget, BackupTargetProvider, ObjectStore, TargetOpenOptions } from '../target.js';

/**
 * Target providers by type id. Every target type comes from a plugin: the CLI passes the plugin
 * host's getTargetProvider as `resolve`, so `dir:`, `tar:` and `s3:` are opened exactly like a
 * third party's target (`new TargetRegistry([], (t) => host.getTargetProvider(t))`). Providers
 * given directly are consulted first (tests use them for fakes). The peer only ever opens
 * targets through a registry.
 */
export class TargetRegistry {
  private readonly providers = new Map<string, BackupTargetProvider>();

  constructor(
    providers: BackupTargetProvider[] = [],
    private readonly resolve?: (type: string) => Promise<BackupTargetProvider>,
  ) {
    for (const p of providers) this.register(p);
  }

  register(provider: BackupTargetProvider): void {
    if (this.providers.has(provider.id))
      throw new TwinError(
        'ETWIN_TARGET_SPEC',
        `a backup target of type "${provider.id}" is already registered`,
        {
          id: provider.id,
        },
      );
    this.providers.set(provider.id, provider);
  }

  /** The object store of a repository target type, or undefined for a type that gives none. */
  async openStore(spec: string, opts: { create: boolean }): Promise<ObjectStore | undefined> {
    const { type, location } = splitSpec(spec);
    const provider = this.providers.get(type) ?? (await this.resolve?.(type));
    if (!provider)
      throw new TwinError('ETWIN_TARGET_SPEC', `unknown target type "${type}" in "${spec}"`, { spec, type });
    return provider.openStore?.(location, opts);
  }

  /**
   * Opens `TYPE:LOCATION` (`dir:/backups`). An unknown type fails with ETWIN_TARGET_SPEC naming
   * the known ones (the plugin host's message lists every target a plugin contributes).
   */
  async open(spec: string, opts?: TargetOpenOptions): Promise<BackupTarget> {
    const { type, location } = splitSpec(spec);
    const provider = this.providers.get(type) ?? (await this.resolve?.(type));
    if (!provider)
      throw new TwinError(
        'ETWIN_TARGET_SPEC',
        `unknown target type "${type}" in "${spec}" (known: ${[...this.providers.keys()].join(', ') || 'none'})`,
        { spec, type },
      );
    return provider.open(location, opts);
  }
}

/** `TYPE:LOCATION` split at its first colon; anything else is ETWIN_TARGET_SPEC. */
function splitSpec(spec: string): { type: string; location: string } {
  const i = spec.indexOf(':');
  if (i <= 0 || i === spec.length - 1)
    throw new TwinError(
      'ETWIN_TARGET_SPEC',
      `target "${spec}" is not TYPE:LOCATION (for example dir:/backups)`,
      {
        spec,
      },
    );
  return { type: spec.slice(0, i), location: spec.slice(i + 1) };
}
