import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ErrorCodes } from '../../src/common/errors.js';
import { ProtocolErrors } from '../../src/control/protocol.js';
import { ROOT } from '../helpers/server.js';

describe('docs/errors.md', () => {
  it('documents every error code of the catalogue and the protocol', () => {
    const doc = readFileSync(path.join(ROOT, 'docs/errors.md'), 'utf8');
    const missing = [...Object.keys(ErrorCodes), ...Object.keys(ProtocolErrors)].filter(
      (c) => !doc.includes(`\`${c}\``),
    );
    expect(missing).toEqual([]);
  });
});
