import { describe, expect, it } from 'vitest';
import { timeArg } from '../../src/commands/repository.js';

describe("find's --oldest/--newest times", () => {
  it('a date is local midnight for --oldest and the end of that day for --newest', () => {
    expect(timeArg('2026-01-31', 'oldest')).toBe(new Date(2026, 0, 31).getTime());
    expect(timeArg('2026-01-31', 'newest')).toBe(new Date(2026, 1, 1).getTime() - 1);
  });

  it('a local time to the minute or second; --newest takes the end of the unit given', () => {
    expect(timeArg('2026-01-31 13:45', 'oldest')).toBe(new Date(2026, 0, 31, 13, 45).getTime());
    expect(timeArg('2026-01-31T13:45', 'newest')).toBe(new Date(2026, 0, 31, 13, 46).getTime() - 1);
    expect(timeArg('2026-01-31 13:45:07', 'newest')).toBe(new Date(2026, 0, 31, 13, 45, 7, 999).getTime());
  });

  it('ISO 8601 with a zone is taken as written; no option, no bound', () => {
    expect(timeArg('2026-01-31T13:45:07Z', 'oldest')).toBe(Date.UTC(2026, 0, 31, 13, 45, 7));
    expect(timeArg('2026-01-31T13:45:07+02:00', 'newest')).toBe(Date.UTC(2026, 0, 31, 11, 45, 7));
    expect(timeArg(undefined, 'oldest')).toBeUndefined();
  });

  it('anything else is ETWIN_USAGE naming the option', () => {
    for (const bad of [
      'yesterday',
      '2026-13-01',
      '2026-02-30',
      '2026-01-31 24:00',
      '31.01.2026',
      '2026-01-31T25:00Z',
    ])
      expect(() => timeArg(bad, 'newest'), bad).toThrow(
        expect.objectContaining({ code: 'ETWIN_USAGE', message: expect.stringContaining('--newest') }),
      );
  });
});
