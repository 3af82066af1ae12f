// Pages load on first visit (one chunk each), so the first render fetches only the shell.
import {
  createRouter,
  createWebHistory,
  type LocationQuery,
  type RouteLocationNormalized,
} from "vue-router";
import { enterOpen, resume, whenSessionEnds } from "./lib/api";
import { nameTab } from "./lib/title";

export const router = createRouter({
  history: createWebHistory(),
  routes: [
    { path: "/signin", name: "signin", component: () => import("./pages/SignInPage.vue") },
    { path: "/", name: "home", component: () => import("./pages/HomePage.vue") },
    { path: "/nodes", name: "nodes", component: () => import("./pages/NodesPage.vue") },
    {
      path: "/nodes/:hostname",
      name: "node",
      component: () => import("./pages/NodeDetailPage.vue"),
      props: true,
    },
    { path: "/gpus", name: "gpus", component: () => import("./pages/GpusPage.vue") },
    { path: "/tasks", name: "tasks", component: () => import("./pages/TasksPage.vue") },
    {
      path: "/tasks/:taskId",
      name: "task",
      component: () => import("./pages/TaskDetailPage.vue"),
      props: true,
    },
    { path: "/vps", name: "vps", component: () => import("./pages/VpsPage.vue") },
    { path: "/docker", name: "docker", component: () => import("./pages/DockerPage.vue") },
    { path: "/tokens", name: "tokens", component: () => import("./pages/TokensPage.vue") },
    { path: "/users", name: "users", component: () => import("./pages/UsersPage.vue") },
    { path: "/:rest(.*)*", redirect: "/" },
  ],
});

/** Where signing in leads: the page asked for (``next``), else Home. */
export function afterSignIn(query: LocationQuery): string {
  const next = typeof query.next === "string" ? query.next : "/";
  return next.startsWith("/") ? next : "/";
}

router.beforeEach(async (to) => {
  // An open Host has nobody to sign in: straight on to the page asked for.
  if (to.name === "signin") return (await enterOpen()) ? afterSignIn(to.query) : true;
  if (await resume()) return true;
  return { name: "signin", query: { next: to.fullPath } };
});

// Each tab says which page it shows (lib/title.ts). A task's page is "Task N" until it
// knows the task is a VPS: TaskDetail then names it "VPS N".
const TITLES: Record<string, (to: RouteLocationNormalized) => string> = {
  signin: () => "Sign in",
  home: () => "Home",
  nodes: () => "Nodes",
  node: (to) => `Node ${String(to.params.hostname)}`,
  gpus: () => "GPUs",
  tasks: () => "Tasks",
  task: (to) => `Task ${String(to.params.taskId)}`,
  vps: () => "VPS",
  docker: () => "Docker",
  tokens: () => "Tokens",
  users: () => "Users",
};

router.afterEach((to) => nameTab(TITLES[String(to.name)]?.(to) ?? ""));

// A token revoked or expired while pages are open: back to sign in, then to the same page.
whenSessionEnds(() => {
  const here = router.currentRoute.value;
  if (here.name !== "signin") void router.replace({ name: "signin", query: { next: here.fullPath } });
});
