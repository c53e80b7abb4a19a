// gres view: a person's review of a gres segment run (flip an answer, reject a mask, undo),
// kept in the browser's localStorage under the run's id and downloaded as corrections.json
// (the format of grd_tools/corrections.py, which `gres grd from-run --corrections` reads).
// app.js calls window.GresReview(DATA, helpers) on a run page only.
"use strict";

window.GresReview = function (DATA, helpers) {
  const { el, badge } = helpers;
  const RUN = DATA.review && DATA.review.run;
  const KEYS = [
    ["j / →", "next image"],
    ["k / ←", "previous image"],
    ["f", "flip present/absent"],
    ["x", "reject the mask"],
    ["u", "undo"],
    ["Enter", "large view"],
    ["d", "download corrections.json"],
  ];
  if (!RUN) {
    const why = (DATA.review && DATA.review.off) || "this page names no run";
    return { bar: el("p", { cls: "note", id: "review-off", text: "Review is off: " + why + "." }), off: true };
  }

  // One storage item per correction (a key press writes one small item, however many are
  // kept) and one for the counts; named by the run's id, so another run's never show here.
  const META = "gres-view-review:" + RUN; // {edits, downloaded: `edits` at the last download}
  const ENTRY = META + ":"; // + the item's key: its correction
  const keyOf = (item) => JSON.stringify([item.image, DATA.expressions[item.expression]]);
  const order = new Map(DATA.items.map((item, k) => [keyOf(item), k])); // record order
  const cards = new Map(); // key -> the card on screen (the page shows at most one per key)
  const itemOfCard = new WeakMap(); // a card on screen -> its item
  let corrections = {}; // key -> {image, expression, group, was, answer}
  const counts = { all: 0, rejected: 0 }; // of `corrections`, kept in step with it
  let meta = { edits: 0, downloaded: null };
  let stored = true; // false: localStorage refused (private mode, disabled, full)
  const undos = []; // [key, the correction before] of this visit, newest last

  function parse(text) {
    try {
      const value = JSON.parse(text);
      return value && typeof value === "object" ? value : null;
    } catch (e) {
      return null; // an item written by hand or cut short: not a correction
    }
  }

  function metaOf(text) {
    const m = parse(text);
    return m && Number.isInteger(m.edits) ? m : { edits: 0, downloaded: null };
  }

  function storage(action) {
    try {
      action(window.localStorage);
      stored = true;
    } catch (e) {
      stored = false;
    }
  }

  function load() {
    storage((s) => {
      corrections = {};
      for (let k = 0; k < s.length; k++) {
        const name = s.key(k);
        const c = name && name.startsWith(ENTRY) ? parse(s.getItem(name)) : null;
        if (c && typeof c.answer === "string") corrections[name.slice(ENTRY.length)] = c;
      }
      meta = metaOf(s.getItem(META));
    });
    recount();
  }

  // ---- the bar: counter, status, download, clear, keys -------------------------------------
  const counter = el("span", { id: "review-count", cls: "review-count" });
  const status = el("span", { id: "review-status", cls: "review-status", role: "status" });
  const download = el("button", { type: "button", id: "review-download", text: "Download corrections.json (d)" });
  const clear = el("button", { type: "button", id: "review-clear", text: "Clear…" });
  const legend = el("p", { cls: "review-keys", id: "review-keys" }, KEYS.flatMap(([k, what]) => [el("kbd", { text: k }), el("span", { text: " " + what + "  " })]));
  const bar = el("section", { cls: "review", id: "review", "aria-label": "review" }, [
    el("div", { cls: "review-row" }, [el("strong", { text: "Review" }), counter, status, download, clear]),
    legend,
  ]);
  download.addEventListener("click", downloadFile);
  clear.addEventListener("click", forget);

  function entries() {
    const last = order.size;
    return Object.entries(corrections)
      .sort(([a], [b]) => (order.has(a) ? order.get(a) : last) - (order.has(b) ? order.get(b) : last))
      .map(([, c]) => c);
  }

  function recount() {
    const all = Object.values(corrections);
    counts.all = all.length;
    counts.rejected = all.filter((c) => c.answer === "rejected").length;
  }

  function tally(correction, sign) {
    if (!correction) return;
    counts.all += sign;
    if (correction.answer === "rejected") counts.rejected += sign;
  }

  function refreshBar(message) {
    const { all, rejected } = counts;
    counter.textContent = all + " changed (" + (all - rejected) + " flipped, " + rejected + " rejected)";
    let text;
    if (!stored) text = "browser storage is off: these corrections go when the page closes, download them";
    else if (meta.downloaded === null) text = all ? "kept in this browser, not downloaded yet" : "";
    else if (meta.downloaded === meta.edits) text = "downloaded, and kept in this browser";
    else text = "changed since the last download";
    status.textContent = message ? message + (text ? " · " + text : "") : text;
    bar.classList.toggle("unsaved", all > 0 && meta.downloaded !== meta.edits);
  }

  // ---- one card ----------------------------------------------------------------------------
  function was(item) {
    return item.present ? "present" : "absent";
  }

  function paint(card, item) {
    const c = corrections[keyOf(item)];
    const mark = card.querySelector(".review-answer");
    if (c) card.setAttribute("data-answer", c.answer);
    else card.removeAttribute("data-answer");
    const rejected = item.present ? "you: mask rejected" : "you: rejected";
    mark.textContent = c ? (c.answer === "rejected" ? rejected : "you: " + c.answer) : "";
    mark.hidden = !c;
    card.querySelector(".review-reject").setAttribute("aria-pressed", String(!!c && c.answer === "rejected"));
    card.querySelector(".review-flip").setAttribute("aria-pressed", String(!!c && c.answer !== "rejected"));
  }

  function decorate(card, item) {
    card.setAttribute("tabindex", "-1"); // focusable by j/k and clicks, not a Tab stop
    itemOfCard.set(card, item);
    if (item.present === null) return card; // an image that failed has no answer to correct
    cards.set(keyOf(item), { card, item });
    const flip = el("button", { type: "button", cls: "review-flip", title: "flip the answer (f)", text: item.present ? "absent (f)" : "present (f)" });
    const reject = el("button", { type: "button", cls: "review-reject", title: "reject the mask: the pair is left out (x)", text: "reject (x)" });
    flip.addEventListener("click", () => change(item, "flip"));
    reject.addEventListener("click", () => change(item, "reject"));
    card.append(el("div", { cls: "review-controls" }, [el("span", { cls: "review-answer badge corrected" }), flip, reject]));
    paint(card, item);
    return card;
  }

  // ---- changes, undo, download, clear ------------------------------------------------------
  function repaint(key) {
    const shown = cards.get(key);
    if (shown && shown.card.isConnected) paint(shown.card, shown.item);
  }

  function set(key, correction) {
    tally(corrections[key], -1);
    tally(correction, 1);
    if (correction) corrections[key] = correction;
    else delete corrections[key];
    meta.edits += 1;
    storage((s) => {
      if (correction) s.setItem(ENTRY + key, JSON.stringify(correction));
      else s.removeItem(ENTRY + key);
      s.setItem(META, JSON.stringify(meta));
    });
    repaint(key);
  }

  function change(item, what) {
    if (item.present === null) return refreshBar("an image that failed has no answer to correct");
    const key = keyOf(item);
    const before = corrections[key] || null;
    const flipped = before && before.answer !== "rejected";
    let answer = null; // null: back to the model's answer
    if (what === "flip" && !flipped) answer = item.present ? "absent" : "present";
    if (what === "reject" && !(before && before.answer === "rejected")) answer = "rejected";
    const after = answer && {
      image: item.image,
      expression: DATA.expressions[item.expression],
      group: DATA.groups[item.group],
      was: was(item),
      answer: answer,
    };
    undos.push([key, before]);
    set(key, after);
    refreshBar();
  }

  function undo() {
    const last = undos.pop();
    if (!last) return refreshBar("nothing to undo");
    const [key, before] = last;
    set(key, before);
    const shown = cards.get(key);
    if (shown && shown.card.isConnected) shown.card.focus();
    const item = DATA.items[order.get(key)];
    refreshBar("undone: " + (item ? DATA.groups[item.group] + "/" + item.name : key));
  }

  function downloadFile() {
    const doc = { format: "gres-corrections", version: 1, run: RUN, corrections: entries() };
    const blob = new Blob([JSON.stringify(doc, null, 1) + "\n"], { type: "application/json" });
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: "corrections.json", hidden: "" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    meta.downloaded = meta.edits;
    storage((s) => s.setItem(META, JSON.stringify(meta)));
    refreshBar("corrections.json: " + doc.corrections.length + " corrections");
  }

  function forget() {
    const keys = Object.keys(corrections);
    const n = keys.length;
    if (!n) return refreshBar("nothing to clear");
    const unsaved = meta.downloaded !== meta.edits ? " They are NOT downloaded yet." : "";
    if (!window.confirm("Forget the " + n + " corrections of this run kept in this browser?" + unsaved)) return;
    corrections = {};
    recount();
    meta = { edits: meta.edits + 1, downloaded: null };
    undos.length = 0;
    storage((s) => {
      for (const key of keys) s.removeItem(ENTRY + key);
      s.setItem(META, JSON.stringify(meta));
    });
    for (const key of keys) repaint(key);
    refreshBar("cleared");
  }

  // another tab of the same run changed them: show its corrections, not stale ones
  window.addEventListener("storage", (ev) => {
    if (ev.key === null) { // the whole storage cleared
      const keys = Object.keys(corrections);
      load();
      for (const key of keys.concat(Object.keys(corrections))) repaint(key);
    } else if (ev.key === META) meta = metaOf(ev.newValue);
    else if (ev.key.startsWith(ENTRY)) {
      const key = ev.key.slice(ENTRY.length);
      const c = parse(ev.newValue);
      tally(corrections[key], -1);
      tally(c, 1);
      if (c) corrections[key] = c;
      else delete corrections[key];
      repaint(key);
    } else return;
    refreshBar();
  });

  // ---- the keyboard ------------------------------------------------------------------------
  function keyboard(grid) {
    function current() {
      const active = document.activeElement;
      const card = active && active.closest ? active.closest(".card") : null;
      return card && grid.element.contains(card) ? card : null;
    }
    function move(step) {
      const list = [...grid.element.querySelectorAll(".card")];
      if (!list.length) return;
      const at = list.indexOf(current());
      let to = at === -1 ? (step > 0 ? 0 : list.length - 1) : at + step;
      if (to < 0 || to >= list.length) {
        if (!grid.turn(step)) return; // the first or last card of the run
        const turned = [...grid.element.querySelectorAll(".card")];
        to = step > 0 ? 0 : turned.length - 1;
        return turned[to] && turned[to].focus();
      }
      list[to].focus();
    }
    document.addEventListener("keydown", (ev) => {
      if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.isComposing) return;
      const target = ev.target;
      if (target && target.closest && target.closest("input, select, textarea, dialog")) return;
      const card = current();
      const key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key; // caps lock on, too
      if (key === "j" || key === "ArrowRight") move(1);
      else if (key === "k" || key === "ArrowLeft") move(-1);
      else if (key === "u") undo();
      else if (key === "d") downloadFile();
      else if (key === "f" || key === "x") {
        if (card) change(itemOfCard.get(card), key === "f" ? "flip" : "reject");
        else refreshBar("choose an image first (j, or a click on it)");
      } else if (key === "Enter" && card && target === card) card.querySelector(".thumb").click();
      else return;
      ev.preventDefault();
    });
  }

  load();
  refreshBar();
  return {
    bar,
    off: false,
    decorate,
    keyboard,
    corrected: (item) => !!corrections[keyOf(item)],
  };
};
