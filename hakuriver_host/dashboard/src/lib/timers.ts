// The few timers the pages keep, tied to a component's life. Live data comes from server
// streams (lib/live.ts); these are for clocks ("5s ago", a running task's duration), for
// collapsing a burst of stream events into one fetch, and for a slow safety refresh of
// what no stream reports.
import { onBeforeUnmount, onMounted, ref } from "vue";

/** How often a page that no stream tells of changes reads its lists again: the Host's
 * dashboard.refresh_seconds, which it writes into index.html (hakuriver-refresh-seconds). */
export const PAGE_REFRESH_MS =
  1000 *
  (Number(
    document.querySelector<HTMLMetaElement>('meta[name="hakuriver-refresh-seconds"]')?.content,
  ) || 15);

/** Call ``fn`` every ``ms`` while the component lives and its tab is visible. */
export function useEvery(fn: () => void, ms: number): void {
  let timer: ReturnType<typeof setInterval> | undefined;
  onMounted(() => {
    timer = setInterval(() => document.visibilityState === "visible" && fn(), ms);
  });
  onBeforeUnmount(() => clearInterval(timer));
}

/** The time now, updated every ``ms`` (a clock for "5s ago" and running durations). */
export function useNow(ms = 1000) {
  const now = ref(Date.now());
  useEvery(() => (now.value = Date.now()), ms);
  return now;
}

/**
 * A function that runs ``fn`` once, ``ms`` after the first of a burst of calls: many
 * stream events in a row cost one fetch, and a steady stream of them still gets one
 * every ``ms`` (a plain debounce would wait for a quiet moment that may never come).
 */
export function useSoon(fn: () => void, ms: number): () => void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let stopped = false;
  onBeforeUnmount(() => {
    stopped = true;
    clearTimeout(timer);
  });
  return () => {
    if (timer !== undefined || stopped) return;
    timer = setTimeout(() => {
      timer = undefined;
      fn();
    }, ms);
  };
}

/**
 * Run ``load`` now, again whenever ``refresh()`` is called, and every ``ms`` while the
 * component lives and the tab is visible (and at once when the tab becomes visible again).
 * Calls never overlap: a refresh asked for during a load runs right after it.
 */
export function useRefresh(load: () => Promise<void>, ms: number) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let stopped = false;
  let busy = false;
  let again = false;

  async function tick(): Promise<void> {
    clearTimeout(timer);
    if (stopped) return;
    if (busy) {
      again = true;
      return;
    }
    if (document.visibilityState === "visible") {
      busy = true;
      try {
        await load();
      } finally {
        busy = false;
      }
      if (again) {
        again = false;
        return tick();
      }
    }
    if (!stopped) timer = setTimeout(() => void tick(), ms);
  }

  function onVisible(): void {
    if (document.visibilityState === "visible") void tick();
  }

  onMounted(() => {
    document.addEventListener("visibilitychange", onVisible);
    void tick();
  });
  onBeforeUnmount(() => {
    stopped = true;
    clearTimeout(timer);
    document.removeEventListener("visibilitychange", onVisible);
  });
  return { refresh: tick };
}
