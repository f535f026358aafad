import { TwinError } from '../../common/errors.js';
import type { BackupTarget, BackupTargetProvider } from '../target.js';
import { directoryTargetProvider } from './directory.js';

/**
 * Target providers by type id: the built-in directory target, then whatever `resolve` finds
 * (the CLI passes the plugin host's getTargetProvider, so `tar:` and `s3:` come from plugins).
 * The peer only ever opens targets through a registry.
 */
export class TargetRegistry {
  private readonly providers = new Map<string, BackupTargetProvider>();

  constructor(
    providers: BackupTargetProvider[] = [directoryTargetProvider],
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

  get ids(): string[] {
    return [...this.providers.keys()];
  }

  /** Opens `TYPE:LOCATION` (`dir:/backups`). */
  async open(spec: string): Promise<BackupTarget> {
    const i = spec.indexOf(':');
    if (i <= 0)
      throw new TwinError(
        'ETWIN_TARGET_SPEC',
        `target "${spec}" is not TYPE:LOCATION (for example dir:/backups)`,
        {
          spec,
        },
      );
    const type = spec.slice(0, i);
    let provider = this.providers.get(type);
    if (!provider && this.resolve) provider = await this.resolve(type);
    if (!provider)
      throw new TwinError(
        'ETWIN_TARGET_SPEC',
        `unknown target type "${type}" in "${spec}" (known: ${this.ids.join(', ')})`,
        {
          spec,
          type,
        },
      );
    return provider.open(spec.slice(i + 1));
  }
}
