// What the submit forms (task, VPS) offer: the nodes and the environments, loaded once when
// the form mounts.
import { onMounted, ref } from "vue";
import { type Node, NodeStatus } from "../gen/hakuriver/v1/node_pb";
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

/** The choices, loaded when the component mounts; ``loaded`` runs once they are in. */
export function useChoices(loaded?: (choices: Choices) => void) {
  const choices = ref<Choices>({ nodes: [], environments: [] });
  const error = ref("");
  onMounted(async () => {
    try {
      choices.value = await loadChoices();
      loaded?.(choices.value);
    } catch (failure) {
      error.value = `could not load nodes and environments: ${errorMessage(failure)}`;
    }
  });
  return { choices, error };
}

/** "gpu-node (8 cores, 16.0 GiB, 2 GPU)", with "offline", "disconnected" or "draining" when so. */
export function nodeLabel(node: Node): string {
  const parts = [`${node.totalCores} cores`, bytes(node.totalMemoryBytes)];
  if (node.gpus.length) parts.push(`${node.gpus.length} GPU`);
  if (node.status !== NodeStatus.ONLINE) parts.push("offline");
  else if (node.disconnected) parts.push("disconnected");
  else if (node.draining) parts.push("draining");
  return `${node.hostname} (${parts.join(", ")})`;
}
