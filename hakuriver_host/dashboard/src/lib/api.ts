// One Connect transport to the Host that serves this page, and a typed client per service.
//
// The API token lives in this tab's sessionStorage (not a cookie): it goes out only as an
// Authorization header that this code adds, so no other site can make the browser send
// it, and no CSRF defence is needed. It is gone when the tab closes. See docs/dashboard.md.
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { reactive } from "vue";
import { Role } from "../gen/hakuriver/v1/access_pb";
import { AccessService } from "../gen/hakuriver/v1/access_service_pb";
import { AuditService } from "../gen/hakuriver/v1/audit_service_pb";
import { EnvironmentService } from "../gen/hakuriver/v1/environment_service_pb";
import { LogService } from "../gen/hakuriver/v1/log_service_pb";
import { NodeService } from "../gen/hakuriver/v1/node_service_pb";
import { SshService } from "../gen/hakuriver/v1/ssh_service_pb";
import { TaskService } from "../gen/hakuriver/v1/task_service_pb";

const TOKEN_KEY = "hakuriver.token";

/** Who is signed in: the token, and the name, role and token id the Host answered for it;
 * ``ended`` why the last session ended without signing out (its token revoked or expired);
 * ``open`` when the Host is open (``auth.authentication = false``): nobody signs in, and
 * every caller is its admin. */
export const session = reactive({
  token: sessionStorage.getItem(TOKEN_KEY) ?? "",
  user: "",
  role: Role.UNSPECIFIED as Role,
  tokenId: "",
  ended: "",
  open: false,
});

// The Host says it is open in the page it serves (index.html's hakuriver-open meta tag):
// asking it without a token would cost an authenticating Host a refusal in its audit log
// at every sign-in. False once it refuses a call for want of a token (restarted with
// authentication on since the page was served).
let openHost =
  document.querySelector<HTMLMetaElement>('meta[name="hakuriver-open"]')?.content === "true";

const bearer: Interceptor = (next) => async (request) => {
  if (session.token) request.header.set("Authorization", `Bearer ${session.token}`);
  return next(request);
};

let onEnded = (): void => {};

/** What to do when the Host stops accepting the signed-in token (the router: sign in). */
export function whenSessionEnds(handler: () => void): void {
  onEnded = handler;
}

let rechecking: Promise<void> | null = null;

/** Ask the Host again for the signed-in user's role: an admin may have changed it. One
 * question at a time: a caller while one is under way waits for its answer (a page that
 * asks before it reads what only a role may read must not go on with the old role). */
function recheckRole(token: string): Promise<void> {
  rechecking ??= (async () => {
    try {
      const who = await api.access.whoAmI({});
      if (session.token === token && session.user) session.role = who.role;
    } catch {
      // Refused as unauthenticated: checkSession signs out; otherwise the role stays.
    } finally {
      rechecking = null;
    }
  })();
  return rechecking;
}

/** Ask the Host again who is signed in, for a tab that would not hear of a change of role
 * otherwise: the Host tells of one by ending the user's streams, and a page with none (the
 * Docker, Tokens and Users pages) asks as it reads its lists again. A refusal of the token
 * signs the tab out (checkSession). */
export function followRole(): Promise<void> {
  return session.user && !session.open ? recheckRole(session.token) : Promise.resolve();
}

// A hidden tab closes its streams (lib/live.ts), so it hears of no change of role and makes
// no call that a revoked token would get refused: it asks as it shows again.
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") void followRole();
});

/** A call of a signed-in tab refused as unauthenticated (its token revoked or expired
 * meanwhile): sign out, keep the Host's message for the sign-in page, and go there, rather
 * than leave every page retrying with a dead token. One refused as not allowed, or a
 * stream ended as unavailable (what an admin's change of the user's role does to their
 * streams): ask the Host for the role again, so that the pages offer what it allows and
 * the bar names it. */
function checkSession(error: unknown, token: string): void {
  if (!session.user || session.token !== token) return;
  if (!isUnauthenticated(error)) {
    const code = error instanceof ConnectError && !isUnreachable(error) ? error.code : null;
    const maybeRole = code === Code.PermissionDenied || code === Code.Unavailable;
    if (maybeRole && !session.open) void recheckRole(token);
    return;
  }
  const message = errorMessage(error);
  if (session.open) openHost = false; // restarted with authentication on
  signOut();
  session.ended = message;
  onEnded();
}

/** A refusal that came by another way than a Connect call (the terminal's WebSocket, closed
 * with the call's status): the tab follows it as it follows a call's, so a terminal ended
 * by a change of role updates the bar at once, not at the page's next refresh. */
export function refusedElsewhere(code: Code, message: string, token: string): void {
  checkSession(new ConnectError(message, code), token);
}

async function* watched<T>(messages: AsyncIterable<T>, token: string): AsyncIterable<T> {
  try {
    yield* messages;
  } catch (error) {
    checkSession(error, token);
    throw error;
  }
}

const ending: Interceptor = (next) => async (request) => {
  const token = session.token;
  try {
    const response = await next(request);
    return response.stream ? { ...response, message: watched(response.message, token) } : response;
  } catch (error) {
    checkSession(error, token);
    throw error;
  }
};

const transport = createConnectTransport({
  baseUrl: window.location.origin,
  interceptors: [ending, bearer],
  useBinaryFormat: true,
});

export const api = {
  tasks: createClient(TaskService, transport),
  logs: createClient(LogService, transport),
  nodes: createClient(NodeService, transport),
  environments: createClient(EnvironmentService, transport),
  access: createClient(AccessService, transport),
  audit: createClient(AuditService, transport),
  ssh: createClient(SshService, transport),
};

/** Ask the Host who holds ``token``; keep it for this tab if it is valid. */
export async function signIn(token: string): Promise<void> {
  session.token = token.trim();
  session.ended = "";
  try {
    const who = await api.access.whoAmI({});
    session.user = who.user;
    session.role = who.role;
    session.tokenId = who.tokenId;
    sessionStorage.setItem(TOKEN_KEY, session.token);
  } catch (error) {
    signOut();
    throw error;
  }
}

/** Enter an open Host (false: it is not open): the name and role it gives every caller,
 * and no token (one kept from before is dropped: the Host does not read it). */
export async function enterOpen(): Promise<boolean> {
  if (session.open) return true;
  if (!openHost) return false;
  try {
    const who = await api.access.whoAmI({});
    signOut();
    session.user = who.user;
    session.role = who.role;
    session.open = true;
    return true;
  } catch (error) {
    if (isUnauthenticated(error)) openHost = false;
    return false;
  }
}

/** Restore the tab's session after a reload, or enter an open Host (false: sign in). */
export async function resume(): Promise<boolean> {
  if (session.user) return true;
  if (await enterOpen()) return true;
  if (!session.token) return false;
  try {
    await signIn(session.token);
    return true;
  } catch (error) {
    if (isUnauthenticated(error)) session.ended = errorMessage(error);
    return false;
  }
}

export function signOut(): void {
  session.token = "";
  session.user = "";
  session.role = Role.UNSPECIFIED;
  session.tokenId = "";
  session.open = false;
  sessionStorage.removeItem(TOKEN_KEY);
}

/** Whether the signed-in user's role includes ``role`` (user < operator < admin). What
 * they may not do is not offered; the Host refuses it anyway. */
export function can(role: Role): boolean {
  return session.role >= role;
}

export { Role };

/** The Host's own message for a failed call (it names the field and the allowed range);
 * for a call that never reached it, that (the browser says only "Failed to fetch"). */
export function errorMessage(error: unknown): string {
  if (isUnreachable(error)) return "cannot reach the Host";
  if (error instanceof ConnectError) return error.rawMessage;
  return error instanceof Error ? error.message : String(error);
}

/** True when a call failed without an answer from the Host (it is restarting, or the
 * network is down): worth retrying, unlike the Host's own refusals. The browser's fetch
 * fails with a bare TypeError. */
export function isUnreachable(error: unknown): boolean {
  return error instanceof ConnectError && error.cause instanceof TypeError;
}

/** True when a call failed because the caller's token is no longer valid. */
export function isUnauthenticated(error: unknown): boolean {
  return error instanceof ConnectError && error.code === Code.Unauthenticated;
}

export function isCanceled(error: unknown): boolean {
  return error instanceof ConnectError && error.code === Code.Canceled;
}
