// Live data from the Host's server streams, tied to a component's life: the stream opens
// when the component mounts, ends when it unmounts, and reopens after a short pause if the
// Host drops it (a Host restart).
import { onBeforeUnmount, onMounted, ref } from "vue";
import { errorMessage, isCanceled } from "./api";

const RETRY_MS = 1000;

/** Run ``consume(signal)`` while the component lives; ``error`` holds the last failure. */
export function useLive(consume: (signal: AbortSignal) => Promise<void>) {
  const error = ref("");
  let controller: AbortController | null = null;
  let stopped = false;

  async function run(): Promise<void> {
    while (!stopped) {
      controller = new AbortController();
      try {
        await consume(controller.signal);
        error.value = "";
        return;
      } catch (failure) {
        if (stopped || isCanceled(failure)) return;
        error.value = errorMessage(failure);
      }
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
    }
  }

  onMounted(() => void run());
  onBeforeUnmount(() => {
    stopped = true;
    controller?.abort();
  });
  return { error };
}
