import { afterAll, beforeAll } from 'vitest';
import { type S3Fixture, startS3 } from './s3-fixture.js';
import { describeS3Target } from './s3-suite.js';

// s3rver in this process, or the store the AWS_* environment names (see s3-fixture.ts). The
// same suite runs against Ceph's RADOS Gateway in s3-rgw.test.ts.
let s3: S3Fixture;
beforeAll(async () => {
  s3 = await startS3();
}, 30_000);
afterAll(async () => {
  await s3?.close();
});

describeS3Target(
  process.env.AWS_ENDPOINT_URL_S3 || process.env.AWS_ENDPOINT_URL || 's3rver on loopback',
  () => s3,
);
