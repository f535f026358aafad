import { parentPort } from 'node:worker_threads';
import { TwinError } from '../common/errors.js';
import { installBytePaths } from '../posix/byte-paths.js';
import {
  type CutRequest,
  cutOp,
  type DropRequest,
  dropOp,
  type FilesRequest,
  filesOp,
  type HashRequest,
  hashOp,
  type IdsRequest,
  idsOp,
  type SealRequest,
  sealOp,
} from './blob-ops.js';
import { toWire } from './worker-pool.js';

// This thread's node:fs reads the mirror by name: names are bytes (src/posix/byte-paths.ts).
installBytePaths();

/**
 * A repository worker thread (worker-pool.ts): answers the requests of blob-ops.ts, one
 * message each.
 */

type Request = CutRequest | HashRequest | IdsRequest | SealRequest | FilesRequest | DropRequest;

async function handle(req: Request) {
  switch (req.op) {
    case 'files':
      return filesOp(req);
    case 'cut':
      return cutOp(req);
    case 'hash':
      return hashOp(req);
    case 'ids':
      return idsOp(req);
    case 'seal':
      return sealOp(req);
    case 'drop':
      return dropOp(req);
    default:
      throw new TwinError(
        'ETWIN_INTERNAL',
        `unknown repository worker request ${(req as { op: string }).op}`,
      );
  }
}

parentPort?.on('message', (msg: { id: number } & Request) => {
  handle(msg).then(
    ({ value, transfer }) => parentPort!.postMessage({ id: msg.id, ok: true, value }, transfer),
    (err) => parentPort!.postMessage({ id: msg.id, ok: false, error: toWire(err) }),
  );
});
