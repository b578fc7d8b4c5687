// HTTP/2 flow-control windows for gRPC servers that receive bulk tensor streams (the coordinator's
// uploads, a worker's ring hops): grpc-js has no server option for them, and at HTTP/2's 64 KB
// default a multi-megabyte stream waits for a window update every 64 KB.
import type * as grpc from '@grpc/grpc-js';

/** HTTP/2 flow-control window for gradient uploads (the protocol default is 64 KB). */
export const FLOW_CONTROL_WINDOW = 16 << 20;
/** Largest HTTP/2 frame peers may send us (the default, 16 KB, means 64 frames per 1 MB chunk). */
export const MAX_FRAME_SIZE = (1 << 24) - 1;

/** Gives an accepted HTTP/2 session the wide connection and per-stream receive windows. */
export function widenSession(session: import('node:http2').ServerHttp2Session): void {
  session.settings({ initialWindowSize: FLOW_CONTROL_WINDOW, maxFrameSize: MAX_FRAME_SIZE });
  session.setLocalWindowSize(FLOW_CONTROL_WINDOW);
}

/**
 * grpc-js lets clients widen their receive window ('grpc-node.flow_control_window') but has no
 * server option, so uploads crawl at HTTP/2's 64 KB default, one window update per 64 KB. Every
 * session the server accepts gets a wide connection window and a wide per-stream window instead.
 * This reaches into grpc-js's private list of its HTTP/2 servers; if that ever disappears the
 * server still works, at the default window.
 */
export function widenFlowControlWindows(server: grpc.Server): void {
  const servers = (server as unknown as { http2Servers?: Map<import('node:http2').Http2Server, unknown> }).http2Servers;
  if (!(servers instanceof Map)) return;
  for (const h2 of servers.keys()) {
    h2.on('session', (session) => {
      session.on('connect', () => undefined);
      try {
        widenSession(session);
      } catch {
        // the session closed before we could widen it
      }
    });
  }
}
