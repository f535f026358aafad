// NODE_EXTRA_CA_CERTS for a process the command's launcher started without it (src/cli/twinfs.cts,
// docs/architecture.md "What a command's start no longer pays"). Node 20 parses the file that
// variable names, with its whole root certificate store, before any script runs: ~30 ms of
// every start where it is set, for certificates only TLS uses. The launcher moves the variable
// into TWINFS_NODE_EXTRA_CA_CERTS; this module, required by the entry when that is set, gives
// both back:
// - to child processes: NODE_EXTRA_CA_CERTS is set again in process.env (a child node process,
//   a plugin's tool, sees what it would have seen);
// - to this process's TLS: every secure context made without a `ca` of its own (the default
//   store, which Node extends with the file's certificates) trusts Node's bundled root
//   certificates and the file's, read on first use. That covers every TLS client and server of
//   the process (the control channel's wss://, the S3 plugin's HTTPS, another plugin's), as
//   Node's own tls.connect, https and the TLS server make their contexts through
//   tls.createSecureContext. A context with a `ca` of its own is left alone, as Node leaves it.
// A client's contexts that differ in nothing but plain options (ciphers, versions: no key,
// certificate or CA of its own) are made once and shared, as Node shares its default store:
// parsing the certificates again for each connection would cost what the launcher saved.
// A file that cannot be read gives the warning Node gives at start, on the first TLS use, and
// TLS trusts the bundled certificates alone, as Node does then.
import type * as TlsT from 'node:tls';

const file = process.env.TWINFS_NODE_EXTRA_CA_CERTS;
delete process.env.TWINFS_NODE_EXTRA_CA_CERTS;
// Set again (by the user, or the launcher skipped): Node has loaded it itself.
if (file && process.env.NODE_EXTRA_CA_CERTS === undefined) {
  process.env.NODE_EXTRA_CA_CERTS = file;
  install(file);
}

function install(caFile: string): void {
  const tls = require('node:tls') as typeof TlsT;
  const fs = require('node:fs') as typeof import('node:fs');
  const original = tls.createSecureContext;
  /** Bundled roots plus the file's certificates; null once the file failed to load. */
  let ca: string[] | null | undefined;
  const trusted = (): string[] | null => {
    if (ca !== undefined) return ca;
    try {
      ca = [...tls.rootCertificates, fs.readFileSync(caFile, 'latin1')];
    } catch (err) {
      ca = null;
      process.emitWarning(`Ignoring extra certs from \`${caFile}\`, load failed: ${(err as Error).message}`);
    }
    return ca;
  };
  const shared = new Map<string, TlsT.SecureContext>();
  const patched = (options?: TlsT.SecureContextOptions): TlsT.SecureContext => {
    if (options?.ca) return original(options);
    const roots = trusted();
    if (!roots) return original(options);
    const key = shareKey(options);
    if (key === undefined) return original({ ...options, ca: roots });
    let c = shared.get(key);
    if (!c) {
      c = original({ ...options, ca: roots });
      shared.set(key, c);
    }
    return c;
  };
  tls.createSecureContext = patched;
}

/** Options that make a context of their own (a key, a certificate, a CA, session secrets). */
const OWN = [
  'ca',
  'cert',
  'key',
  'pfx',
  'passphrase',
  'crl',
  'dhparam',
  'ticketKeys',
  'sessionIdContext',
  'privateKeyIdentifier',
  'privateKeyEngine',
  'clientCertEngine',
] as const;
/** The plain options a shared context is made from. */
const PLAIN = [
  'ciphers',
  'ecdhCurve',
  'sigalgs',
  'minVersion',
  'maxVersion',
  'secureProtocol',
  'secureOptions',
  'honorCipherOrder',
  'sessionTimeout',
  'allowPartialTrustChain',
] as const;

/** The key of the shared context for these options, or undefined: a context of their own. */
function shareKey(options: TlsT.SecureContextOptions | undefined): string | undefined {
  const o = (options ?? {}) as Record<string, unknown>;
  if (OWN.some((k) => o[k] !== undefined && o[k] !== null)) return undefined;
  const values = PLAIN.map((k) => o[k]);
  if (values.some((v) => v !== undefined && v !== null && typeof v === 'object')) return undefined;
  return JSON.stringify(values.map((v) => (v === undefined ? null : v)));
}
