// What the submit forms (task, VPS) offer: the nodes and the environments, asked for when
// the form mounts and again each time it is entered, so that what changed since (a node
// that joined, an environment made, a GPU freed) is offered without reloading the page.
import { computed, onMounted, ref, shallowRef, watch } from "vue";
import { type Node, NodeStatus } from "../gen/hakuriver/v1/node_pb";
import { freeGpus } from "../components/NodeHealth";
import { api, errorMessage } from "./api";
import { bytes } from "./format";

export interface Choices {
  nodes: Node[];
  /** Environment names: tarballs plus images the Runners have loaded. */
  environments: string[];
}

/** The nodes and the environments. The environments are the tarballs (ListTars) and the
 * images Runners report loaded (ListNodes); either list alone still gives a usable form,
 * so only both failing is an error. */
export async function loadChoices(): Promise<Choices> {
  const [listed, tarred] = await Promise.allSettled([
    api.nodes.listNodes({}),
    api.environments.listTars({}),
  ]);
  if (listed.status === "rejected" && tarred.status === "rejected") throw listed.reason;
  const nodes = listed.status === "fulfilled" ? listed.value : { nodes: [] };
  const names = new Set<string>();
  if (tarred.status === "fulfilled") for (const tar of tarred.value.tarballs) names.add(tar.name);
  for (const node of nodes.nodes) for (const env of node.environments) names.add(env);
  return {
    nodes: [...nodes.nodes].sort((a, b) => a.hostname.localeCompare(b.hostname)),
    environments: [...names].sort(),
  };
}

/** ``ask()``'s answer (``initial`` until it comes), asked for when the component mounts
 * and again by ``refresh``, which a form or a field calls on its ``focusin`` and
 * ``pointerenter``: when the pointer comes over it or the focus comes into it from outside
 * (not as the focus moves between its fields), unless an answer is awaited. ``error`` is
 * the last failure's message ("" once an answer comes). */
export function useAskedOnEntry<T>(ask: () => Promise<T>, initial: T) {
  const value = shallowRef(initial);
  const error = ref("");
  let loading = false;

  async function load(): Promise<void> {
    loading = true;
    try {
      value.value = await ask();
      error.value = "";
    } catch (failure) {
      error.value = errorMessage(failure);
    } finally {
      loading = false;
    }
  }

  function refresh(event: Event): void {
    const from = (event as FocusEvent).relatedTarget;
    const entered = event.currentTarget;
    if (loading || (from instanceof Element && entered instanceof Element && entered.contains(from)))
      return;
    void load();
  }

  onMounted(load);
  return { value, error, refresh };
}

/** The choices, asked for as useAskedOnEntry says; ``loaded`` runs once, when the first
 * are in. */
export function useChoices(loaded?: (choices: Choices) => void) {
  const asked = useAskedOnEntry(loadChoices, { nodes: [], environments: [] });
  if (loaded) watch(asked.value, loaded, { once: true });
  const error = computed(() =>
    asked.error.value ? `could not load nodes and environments: ${asked.error.value}` : "",
  );
  return { choices: asked.value, error, refresh: asked.refresh };
}

/** "gpu-node (8 cores, 16.0 GiB, 1 of 2 GPUs free)", with "offline", "disconnected" or
 * "draining" when so. */
export function nodeLabel(node: Node): string {
  const parts = [`${node.totalCores} cores`, bytes(node.totalMemoryBytes)];
  if (node.gpus.length) parts.push(`${freeGpus(node)} of ${node.gpus.length} GPUs free`);
  if (node.status !== NodeStatus.ONLINE) parts.push("offline");
  else if (node.disconnected) parts.push("disconnected");
  else if (node.draining) parts.push("draining");
  return `${node.hostname} (${parts.join(", ")})`;
}
