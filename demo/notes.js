// A <textarea> bound to a Y.Text: the lightest editor binding there is (no editor
// library to load; the demo's notes are plain text). Typing becomes Y.Text edits (the
// changed range, found by the common prefix and suffix); other people's edits rewrite
// the textarea and move the caret and selection through them, so typing is never
// interrupted. For rich text, bind CodeMirror (y-codemirror.next) or Quill (y-quill) to
// the same Y.Text instead.

/** Binds `area` to `ytext`; returns a function that unbinds. */
export function bindTextarea(area, ytext) {
  area.value = ytext.toString();
  const onInput = () => {
    const before = ytext.toString();
    const after = area.value;
    let start = 0;
    while (start < before.length && start < after.length && before[start] === after[start]) start++;
    let endBefore = before.length;
    let endAfter = after.length;
    while (endBefore > start && endAfter > start && before[endBefore - 1] === after[endAfter - 1]) {
      endBefore--;
      endAfter--;
    }
    ytext.doc.transact(() => {
      if (endBefore > start) ytext.delete(start, endBefore - start);
      if (endAfter > start) ytext.insert(start, after.slice(start, endAfter));
    });
  };
  const onChange = (event, transaction) => {
    if (transaction.local) return; // typed here: the textarea has it already
    let [selStart, selEnd] = [area.selectionStart, area.selectionEnd];
    let at = 0;
    for (const op of event.delta) {
      if (op.retain) at += op.retain;
      else if (op.insert) {
        const n = op.insert.length;
        if (at < selStart) selStart += n;
        if (at < selEnd) selEnd += n;
        at += n;
      } else if (op.delete) {
        selStart -= Math.max(0, Math.min(op.delete, selStart - at));
        selEnd -= Math.max(0, Math.min(op.delete, selEnd - at));
      }
    }
    area.value = ytext.toString();
    if (document.activeElement === area) area.setSelectionRange(selStart, selEnd);
  };
  area.addEventListener("input", onInput);
  ytext.observe(onChange);
  return () => {
    area.removeEventListener("input", onInput);
    ytext.unobserve(onChange);
  };
}

/** Keeps `binding`'s presence up to date with the caret of `area` (as Yjs relative
 * positions, which stay put through others' edits) and shows the others' carets in
 * `list`: who, where (line and column), and the text around it. */
export function showPresence(Y, binding, area, list, user) {
  const send = () => {
    const rel = (i) => Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(binding.text, i));
    binding.setPresence({ user, anchor: rel(area.selectionStart), head: rel(area.selectionEnd) });
  };
  for (const ev of ["select", "keyup", "click", "input", "focus"]) area.addEventListener(ev, send);
  const render = () => {
    const text = binding.text.toString();
    const items = [];
    for (const [who, state] of binding.others) {
      const abs = state && state.head && Y.createAbsolutePositionFromRelativePosition(
        Y.createRelativePositionFromJSON(state.head), binding.doc);
      if (!abs) continue;
      const at = abs.index;
      const before = text.slice(0, at);
      const line = before.split("\n").length;
      const col = at - before.lastIndexOf("\n");
      const li = document.createElement("li");
      li.dataset.user = who;
      li.dataset.index = String(at);
      const ctx = document.createElement("code");
      ctx.append(text.slice(Math.max(0, at - 12), at), Object.assign(document.createElement("mark"), { textContent: "|" + who }), text.slice(at, at + 12));
      li.append(`${who} is editing, line ${line}, column ${col}: `, ctx);
      items.push(li);
    }
    list.replaceChildren(...items);
  };
  const stop = binding.onPresence(render);
  binding.text.observe(render);
  send();
  return () => {
    stop();
    binding.text.unobserve(render);
    for (const ev of ["select", "keyup", "click", "input", "focus"]) area.removeEventListener(ev, send);
  };
}
