import { describe, expect, it } from 'vitest';
import { validateConfig } from '../../src/cli/config.js';
import {
  mergeSmbSettings,
  parseListen,
  parseUserSpec,
  renderSmbConf,
  resolveSmbSettings,
  sambaLayout,
  validateSmbSettings,
} from '../../src/smb/index.js';

/** The SMB settings and the generated smb.conf, without running Samba. */
describe('SMB settings', () => {
  it('parses [HOST:]PORT, loopback by default, IPv6 in brackets', () => {
    expect(parseListen('4450')).toEqual({ host: '127.0.0.1', port: 4450 });
    expect(parseListen('0.0.0.0:445')).toEqual({ host: '0.0.0.0', port: 445 });
    expect(parseListen('[::1]:4450')).toEqual({ host: '::1', port: 4450 });
    for (const bad of ['', 'x', '70000', '1.2.3.4:', ':0', 'a:b:c'])
      expect(() => parseListen(bad), bad).toThrow(/\[HOST:\]PORT/);
  });

  it('parses NAME:PASSWORD (the password may hold colons) and checks names', () => {
    expect(parseUserSpec('alice:a:b:c')).toEqual({ name: 'alice', password: 'a:b:c' });
    expect(() => parseUserSpec('alice')).toThrow(/NAME:PASSWORD/);
    expect(() => parseUserSpec('alice:')).toThrow(/non-empty/);
    expect(() => parseUserSpec('Root Admin:x')).toThrow(/lower-case/);
    expect(() => parseUserSpec('-x:y')).toThrow(/lower-case/);
  });

  it('validates the "smb" block of a config file', () => {
    const ok = { listen: '4450', share: 'data', users: [{ name: 'al', password: 'p' }], readOnly: true };
    expect(validateConfig({ smb: ok }, '/etc/twinfs.json').smb).toEqual(ok);
    const bad: Array<[unknown, RegExp]> = [
      ['4450', /must be an object/],
      [{ users: [] }, /"listen" must be a string/],
      [{ listen: 'x' }, /\[HOST:\]PORT/],
      [{ listen: '1', share: 'a b]' }, /"share"/],
      [{ listen: '1', users: [{ name: 'a' }] }, /\{"name": string, "password": string\}/],
      [{ listen: '1', users: [{ name: 'a', password: 'x', admin: true }] }, /unknown user setting "admin"/],
      [
        {
          listen: '1',
          users: [
            { name: 'a', password: 'x' },
            { name: 'a', password: 'y' },
          ],
        },
        /listed twice/,
      ],
      [{ listen: '1', guest: 'yes' }, /"guest" must be a boolean/],
      [{ listen: '1', port: 1 }, /unknown setting "port"/],
    ];
    for (const [v, re] of bad) expect(() => validateSmbSettings(v, 'f.json'), JSON.stringify(v)).toThrow(re);
  });

  it('merges the command line over the config file', () => {
    const file = {
      listen: '4450',
      users: [
        { name: 'a', password: 'old' },
        { name: 'b', password: 'b' },
      ],
    };
    expect(mergeSmbSettings(file, { listen: '5000', users: [{ name: 'a', password: 'new' }] })).toEqual({
      listen: '5000',
      users: [
        { name: 'a', password: 'new' },
        { name: 'b', password: 'b' },
      ],
    });
    expect(mergeSmbSettings(undefined, {})).toBeUndefined();
    expect(() => mergeSmbSettings(undefined, { users: [{ name: 'a', password: 'x' }] })).toThrow(
      /needs --smb/,
    );
    expect(() => mergeSmbSettings(undefined, { listen: '1' })).toThrow(/nobody could connect/);
  });

  it('renders a config that keeps Samba inside its directory and refuses paths smb.conf would mangle', () => {
    const layout = sambaLayout('/var/lib/twinfs/smb');
    const settings = resolveSmbSettings({ listen: '4450', users: [{ name: 'a', password: 'x' }] });
    const conf = renderSmbConf({ layout, settings, sharePath: '/mnt/twin', forceUser: 'root' });
    for (const line of [
      'passdb backend = tdbsam:/var/lib/twinfs/smb/private/passdb.tdb',
      'lock directory = /var/lib/twinfs/smb/lock',
      'pid directory = /var/lib/twinfs/smb/run',
      'ncalrpc dir = /var/lib/twinfs/smb/ncalrpc',
      'interfaces = 127.0.0.1',
      'smb ports = 4450',
      'restrict anonymous = 2',
      'guest ok = no',
      'valid users = a',
      'force user = root',
      'kernel oplocks = no',
      'store dos attributes = yes',
      '[twinfs]',
      'path = /mnt/twin',
    ])
      expect(conf).toContain(line);
    const anywhere = renderSmbConf({
      layout,
      settings: resolveSmbSettings({ listen: '0.0.0.0:445', guest: true, readOnly: true }),
      sharePath: '/mnt/twin',
      forceUser: 'root',
    });
    expect(anywhere).toContain('bind interfaces only = no');
    expect(anywhere).not.toContain('interfaces = 0.0.0.0');
    expect(anywhere).toContain('read only = yes');
    expect(anywhere).not.toContain('valid users');
    expect(() => renderSmbConf({ layout, settings, sharePath: '/mnt/100%', forceUser: 'root' })).toThrow(
      /ETWIN_SMB_CONFIG|cannot go into smb.conf/,
    );
    const deep = sambaLayout(`/${'d'.repeat(90)}/smb`);
    expect(() =>
      renderSmbConf({ layout: deep, settings, sharePath: '/mnt/twin', forceUser: 'root' }),
    ).toThrow(/too deep/);
  });
});
