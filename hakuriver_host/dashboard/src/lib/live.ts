// Live data from the Host's server streams, tied to a component's life: the stream opens
// when the component mounts, ends when it unmounts, and reopens after a short pause if the
// Host drops it (a Host restart).
//
// While the tab is hidden its streams are closed and reopened when it shows again (the same
// path as a reconnect): over plain HTTP/1.1 a browser keeps at most six connections to a
// host, each open stream holds one, and background tabs must not starve the visible one.
import { onBeforeUnmount, onMounted, ref } from "vue";
import { errorMessage, followRole, isCanceled } from "./api";

const RETRY_MS = 1000;

/** Run ``consume(signal, ok)`` while the component lives and its tab is visible; ``error``
 * holds the last failure until ``consume`` calls ``ok()`` (data flows again) or returns. */
export function useLive(consume: (signal: AbortSignal, ok: () => void) => Promise<void>) {
  const error = ref("");
  let controller: AbortController | null = null;
  let stopped = false;
  let running = false;
  const ok = () => {
    error.value = "";
  };

  async function run(): Promise<void> {
    running = true;
    try {
      while (!stopped && !document.hidden) {
        controller = new AbortController();
        try {
          await consume(controller.signal, ok);
          error.value = "";
          return;
        } catch (failure) {
          if (stopped || isCanceled(failure) || controller.signal.aborted) return;
          error.value = errorMessage(failure);
        }
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
      }
    } finally {
      running = false;
    }
  }

  // Hidden, the tab heard of no change of role: it asks first, and reopens its streams
  // with what the role it has now may ask for (not an operator's filter on another user).
  async function reopen(): Promise<void> {
    await followRole();
    if (!running && !stopped && !document.hidden) void run();
  }

  function onVisibility(): void {
    if (document.hidden) {
      controller?.abort();
    } else {
      void reopen();
    }
  }

  onMounted(() => {
    document.addEventListener("visibilitychange", onVisibility);
    void run();
  });
  onBeforeUnmount(() => {
    stopped = true;
    document.removeEventListener("visibilitychange", onVisibility);
    controller?.abort();
  });
  return { error };
}
