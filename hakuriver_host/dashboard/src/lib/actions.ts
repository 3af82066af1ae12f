// Buttons that call the Host for one row or item (start, stop, kill, delete...): which are
// under way (their buttons wait), and the Host's message when one fails.
import { reactive, ref } from "vue";
import { errorMessage } from "./api";

/**
 * ``run(key, work)`` marks ``key`` busy while ``work`` runs, shows its failure in ``error``
 * (prefixed with ``what`` when given, e.g. the row's id), and then calls ``after`` (a
 * refresh) whether it worked or not.
 */
export function useActions(after?: () => unknown) {
  const busy = reactive(new Set<string>());
  const error = ref("");

  async function run(key: string, work: () => Promise<unknown>, what = ""): Promise<void> {
    error.value = "";
    busy.add(key);
    try {
      await work();
    } catch (failure) {
      error.value = what ? `${what}: ${errorMessage(failure)}` : errorMessage(failure);
    } finally {
      busy.delete(key);
      await after?.();
    }
  }

  return { busy, error, run };
}
