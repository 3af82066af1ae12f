// One question before a destructive action (kill a task, stop a VPS, delete an environment
// or its tarballs): ``confirmAction`` opens the page's confirmation dialog
// (components/ConfirmDialog.vue, in App.vue) naming what will be destroyed, and resolves
// true only when the user presses its action button. One misclick does nothing.
import { shallowRef } from "vue";

export interface ConfirmRequest {
  /** The question, naming the thing: "Kill task 123?". */
  title: string;
  /** What it is and what is lost (the command line, "this cannot be undone"). */
  detail: string;
  /** The button that does it: "Kill task". */
  action: string;
}

interface Asked extends ConfirmRequest {
  answer: (ok: boolean) => void;
}

/** The question on screen, if any. */
export const asked = shallowRef<Asked | null>(null);

/** Ask; a question already open is answered "no" (only one at a time). */
export function confirmAction(request: ConfirmRequest): Promise<boolean> {
  answer(false);
  return new Promise((resolve) => {
    asked.value = { ...request, answer: resolve };
  });
}

/** Close the open question, if any, with ``ok``. */
export function answer(ok: boolean): void {
  const open = asked.value;
  asked.value = null;
  open?.answer(ok);
}
