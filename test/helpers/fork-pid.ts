import { beforeEach } from 'vitest';

/**
 * Every test records the fork it runs in (its `meta().forkPid`), so that the hang watchdog in
 * vitest's main process (watchdog-reporter.ts) knows which fork is a file's instead of guessing it
 * from the forks' ages: two files started within seconds of each other have forks of about the
 * same age, and a guess once took a long file's running fork for the exited fork of a short one
 * and stopped it.
 */
beforeEach((ctx) => {
  (ctx.task.meta as { forkPid?: number }).forkPid = process.pid;
});
