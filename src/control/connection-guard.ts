import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { Socket } from 'node:net';

/**
 * Keeps the control channel from taking file descriptors the filesystem needs. Every TCP
 * connection costs the server one descriptor from the same process limit the FUSE handlers
 * open backing files with; a flood of idle connections once took all of them and every open
 * through the mount failed with EMFILE. So the control plane gets a bounded share of the
 * limit, of which only part may be connections that have not authenticated yet, and a socket
 * that has not become a websocket within handshakeMs (it never sent a byte, or dribbles its
 * request) is closed. When the unauthenticated cap is reached, a new socket pushes out the
 * oldest unauthenticated one (as sshd's MaxStartups drops early): a flood then churns through
 * its own sockets, and an operator, who completes the handshake and hello in milliseconds,
 * still gets in. A socket that completed the websocket upgrade is pushed out only when no
 * socket short of it is left: between its upgrade and its hello (a turn of a busy server's
 * event loop) a flood of bare sockets cannot push it out. Only when authenticated connections fill the total cap is a new socket
 * refused at accept.
 */
export interface ConnectionLimits {
  /** Most sockets at once, authenticated or not. */
  maxConnections: number;
  /** Most sockets at once that have not said a valid hello. */
  maxUnauthenticated: number;
  /** A socket must complete the websocket upgrade within this, ms. */
  handshakeMs: number;
}

/** Default share of the process's descriptor limit the control channel may use. */
export const CONTROL_FD_SHARE = 1 / 8;
export const DEFAULT_MAX_CONNECTIONS = 256;
export const DEFAULT_MAX_UNAUTHENTICATED = 64;
export const DEFAULT_HANDSHAKE_MS = 5000;

/** The soft limit on open files of this process (RLIMIT_NOFILE), or null if unknown. */
export function openFileLimit(limitsText?: string): number | null {
  let text = limitsText;
  try {
    text ??= readFileSync('/proc/self/limits', 'utf8');
  } catch {
    return null;
  }
  const m = /^Max open files\s+(\d+|unlimited)\s/m.exec(text);
  if (!m || m[1] === 'unlimited') return null;
  return Number(m[1]);
}

/**
 * The limits to use: what was asked (or the defaults), never more than the control plane's
 * share of the descriptor limit; unauthenticated sockets never more than half of the total, so
 * an unauthenticated flood cannot keep operators out.
 */
export function resolveLimits(
  asked: Partial<ConnectionLimits> = {},
  fdLimit: number | null = openFileLimit(),
): ConnectionLimits {
  const share = fdLimit === null ? Number.POSITIVE_INFINITY : Math.floor(fdLimit * CONTROL_FD_SHARE);
  const maxConnections = Math.max(2, Math.min(asked.maxConnections ?? DEFAULT_MAX_CONNECTIONS, share));
  const maxUnauthenticated = Math.max(
    1,
    Math.min(asked.maxUnauthenticated ?? DEFAULT_MAX_UNAUTHENTICATED, Math.floor(maxConnections / 2)),
  );
  return { maxConnections, maxUnauthenticated, handshakeMs: asked.handshakeMs ?? DEFAULT_HANDSHAKE_MS };
}

export interface GuardStats {
  limits: ConnectionLimits;
  open: number;
  unauthenticated: number;
  /** Sockets closed at accept because the total cap was reached. */
  refused: number;
  /** Unauthenticated sockets pushed out by newer ones (the unauthenticated cap was reached). */
  evicted: number;
  /** Sockets closed because they did not become a websocket in time. */
  handshakeTimeouts: number;
}

export class ConnectionGuard {
  private readonly sockets = new Map<
    Socket,
    { timer: NodeJS.Timeout | null; upgraded: boolean; authed: boolean }
  >();
  private unauthed = 0;
  private refused = 0;
  private evicted = 0;
  private handshakeTimeouts = 0;

  constructor(
    server: Server,
    readonly limits: ConnectionLimits,
  ) {
    server.on('connection', (socket: Socket) => this.admit(socket));
  }

  /** The socket became a websocket: the hello timeout takes over from the handshake timeout. */
  upgraded(socket: Socket): void {
    const s = this.sockets.get(rawSocket(socket));
    if (!s) return;
    s.upgraded = true;
    if (s.timer) {
      clearTimeout(s.timer);
      s.timer = null;
    }
  }

  /** The socket's hello was accepted: it no longer counts against the unauthenticated cap. */
  authenticated(socket: Socket): void {
    const s = this.sockets.get(rawSocket(socket));
    if (s && !s.authed) {
      s.authed = true;
      this.unauthed--;
    }
  }

  stats(): GuardStats {
    return {
      limits: { ...this.limits },
      open: this.sockets.size,
      unauthenticated: this.unauthed,
      refused: this.refused,
      evicted: this.evicted,
      handshakeTimeouts: this.handshakeTimeouts,
    };
  }

  /** Closes every socket (shutdown). */
  destroyAll(): void {
    for (const socket of this.sockets.keys()) socket.destroy();
  }

  private admit(socket: Socket): void {
    if (this.unauthed >= this.limits.maxUnauthenticated) {
      const old = this.oldestUnauthenticated();
      if (old) {
        this.evicted++;
        this.forget(old);
        old.destroy();
      }
    }
    if (this.sockets.size >= this.limits.maxConnections) {
      this.refused++;
      socket.destroy();
      return;
    }
    const timer = setTimeout(() => {
      this.handshakeTimeouts++;
      socket.destroy();
    }, this.limits.handshakeMs);
    timer.unref();
    this.sockets.set(socket, { timer, upgraded: false, authed: false });
    this.unauthed++;
    socket.once('close', () => this.forget(socket));
  }

  /**
   * The socket a new one pushes out: the oldest that has not upgraded, else the oldest that
   * has upgraded but not said hello (the Map keeps insertion order: first is oldest).
   */
  private oldestUnauthenticated(): Socket | undefined {
    let upgraded: Socket | undefined;
    for (const [socket, s] of this.sockets) {
      if (s.authed) continue;
      if (!s.upgraded) return socket;
      upgraded ??= socket;
    }
    return upgraded;
  }

  private forget(socket: Socket): void {
    const s = this.sockets.get(socket);
    if (!s) return;
    if (s.timer) clearTimeout(s.timer);
    if (!s.authed) this.unauthed--;
    this.sockets.delete(socket);
  }
}

/**
 * The TCP socket under a TLS socket (the one 'connection' handed us). Node keeps it as
 * `_parent` on a server-side TLSSocket; a plain socket is its own.
 */
function rawSocket(socket: Socket): Socket {
  return (socket as Socket & { _parent?: Socket })._parent ?? socket;
}
