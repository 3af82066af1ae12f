// The browser tab's title: "Task 123 · HakuRiver", "Nodes · HakuRiver", so a user with
// several tabs open can tell them apart.

/** Name the tab after the page it shows ("" for none). */
export function nameTab(page: string): void {
  document.title = page ? `${page} · HakuRiver` : "HakuRiver";
}
