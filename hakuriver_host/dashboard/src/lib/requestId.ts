// SubmitTask's request_id from a form: one id per request sent until it is answered, so a
// submission pressed again after its answer was lost (the connection broke, the Host
// restarted) gets the tasks the Host created for it, never a second set of them. A changed
// request, or one sent after an answer, gets a fresh id.

/** 32 random hex digits (crypto.randomUUID needs a secure context, which a dashboard served
 * over plain HTTP is not). */
function freshId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function useRequestId(): {
  idFor: (request: unknown) => string;
  answered: () => void;
} {
  let sent = "";
  let id = "";
  return {
    /** The id to send ``request`` with: the last one's, if it is that same request. */
    idFor(request: unknown): string {
      const shape = JSON.stringify(request, (_, value: unknown) =>
        typeof value === "bigint" ? value.toString() : value,
      );
      if (shape !== sent || !id) {
        sent = shape;
        id = freshId();
      }
      return id;
    },
    /** The Host answered: the next request is a new submission. */
    answered(): void {
      sent = "";
      id = "";
    },
  };
}
