export { renderSmbConf, type SambaLayout, sambaLayout } from './samba-conf.js';
export { CREATED_USER_COMMENT, type SmbClientSession } from './samba-tools.js';
export {
  mergeSmbSettings,
  parseListen,
  parseUserSpec,
  type ResolvedSmbSettings,
  resolveSmbSettings,
  type SmbSettings,
  type SmbUser,
  validateSmbSettings,
} from './settings.js';
export {
  describeSmbEvent,
  type SmbEvent,
  SmbService,
  type SmbServiceOptions,
  type SmbState,
  type SmbStatus,
} from './smb-service.js';
