// gres view: renders window.GRES_VIEW_DATA (written by gres_cli/view) into the page.
// Every string from the data goes into the page with textContent, never as HTML.
"use strict";

(function () {
  const DATA = window.GRES_VIEW_DATA;
  const PAGE_SIZE = 120; // cards per page: 10,000 records stay responsive
  const SAFE_SRC = /^(img|plots|files)\/[A-Za-z0-9._-]+$/; // only files the site itself holds

  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "cls") node.className = value;
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else node.setAttribute(key, String(value));
    }
    for (const child of children || []) if (child) node.append(child);
    return node;
  }

  function fmt(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    const d = digits === undefined ? 3 : digits;
    const x = Number(value);
    const rounded = x.toFixed(d);
    // One rounding with the CLI and the README (Python's format): an exact tie rounds to the
    // even digit there, away from zero in toFixed (29/32 = 0.90625: 0.9062, not 0.9063).
    // toFixed(100) is the exact expansion of any double above 1e-80 up to its 100th digit.
    if (!Number.isFinite(x) || d < 1) return rounded;
    const exact = Math.abs(x).toFixed(100);
    const cut = exact.indexOf(".") + 1 + d;
    const tie = exact[cut] === "5" && /^0*$/.test(exact.slice(cut + 1));
    if (!tie || Number(exact[cut - 1]) % 2 === 1) return rounded; // odd: up is to even
    return (x < 0 ? "-" : "") + exact.slice(0, cut);
  }

  function signed(value) {
    if (value === null || value === undefined) return "–";
    return (value >= 0 ? "+" : "") + fmt(value, 2);
  }

  function picture(slot, alt, which) {
    const src = slot && slot[which || "thumb"];
    if (src && SAFE_SRC.test(src)) {
      return el("img", { src: src, alt: alt, loading: "lazy", decoding: "async" });
    }
    const why = (slot && slot.picture_error) || "no picture";
    return el("div", { cls: "no-picture", text: "no picture", title: why });
  }

  function count(n, noun) {
    return n + " " + noun + (n === 1 ? "" : "s");
  }

  function badge(text, kind) {
    return el("span", { cls: "badge " + kind, text: text });
  }

  function findingsList(findings) {
    if (!findings || !findings.length) return null;
    return el(
      "ul",
      { cls: "findings" },
      findings.map((f) =>
        el("li", { cls: "finding " + f.severity }, [
          el("strong", { text: f.code + " " }),
          el("span", { text: f.message }),
          el("code", { text: " " + f.where }),
        ]),
      ),
    );
  }

  function table(rows, header) {
    const tbl = el("table", { cls: "numbers" });
    if (header) tbl.append(el("tr", {}, header.map((h) => el("th", { text: h }))));
    for (const row of rows) tbl.append(el("tr", {}, row.map((c) => el("td", { text: c }))));
    return tbl;
  }

  // ---- the full-size viewer --------------------------------------------------------------
  const viewer = document.getElementById("viewer");
  document.getElementById("viewer-close").addEventListener("click", () => viewer.close());
  viewer.addEventListener("click", (ev) => {
    if (ev.target === viewer) viewer.close(); // a click on the backdrop
  });

  function openViewer(title, pictures, fields) {
    document.getElementById("viewer-title").textContent = title;
    const box = document.getElementById("viewer-pictures");
    box.replaceChildren(
      ...pictures.map((p) => el("figure", {}, [picture(p.slot, p.label, "large"), el("figcaption", { text: p.label })])),
    );
    document.getElementById("viewer-fields").replaceChildren(
      ...(fields || []).map(([k, v]) => el("tr", {}, [el("th", { text: k }), el("td", { text: v })])),
    );
    viewer.showModal();
  }

  // ---- a paginated grid of cards ---------------------------------------------------------
  function pagedGrid(container, renderCard) {
    const info = el("span", { cls: "page-info" });
    const prev = el("button", { type: "button", text: "‹ previous" });
    const next = el("button", { type: "button", text: "next ›" });
    const grid = el("div", { cls: "grid" });
    container.append(el("div", { cls: "pager" }, [prev, info, next]), grid);
    let items = [];
    let page = 0;
    function draw() {
      const pages = Math.max(1, Math.ceil(items.length / PAGE_SIZE));
      page = Math.min(page, pages - 1);
      const shown = items.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
      grid.replaceChildren(...shown.map(renderCard));
      info.textContent = items.length ? items.length + " shown · page " + (page + 1) + " of " + pages : "none";
      prev.disabled = page === 0;
      next.disabled = page >= pages - 1;
    }
    function turn(step) {
      const to = page + step;
      if (to < 0 || to * PAGE_SIZE >= items.length) return false;
      page = to;
      draw();
      return true;
    }
    prev.addEventListener("click", () => turn(-1));
    next.addEventListener("click", () => turn(1));
    return {
      element: grid,
      turn,
      show(newItems) {
        items = newItems;
        page = 0;
        draw();
      },
    };
  }

  function control(label, input) {
    return el("label", { cls: "control" }, [el("span", { text: label }), input]);
  }

  function select(id, options) {
    return el("select", { id: id }, options.map(([value, text]) => el("option", { value: value, text: text })));
  }

  // ---- a gres segment run ----------------------------------------------------------------
  function scoreBar(item, lo, hi) {
    if (item.score === null || item.margin === null) return null;
    const at = (x) => (100 * (x - lo)) / (hi - lo) + "%";
    const low = Math.min(item.score, item.margin);
    const fill = el("div", { cls: "fill " + (item.score > item.margin ? "above" : "below") });
    fill.style.left = at(low);
    fill.style.width = (100 * Math.abs(item.score - item.margin)) / (hi - lo) + "%";
    const mark = el("div", { cls: "margin-mark", title: "margin m = " + item.margin });
    mark.style.left = at(item.margin);
    return el("div", { cls: "bar", title: "score " + item.score + " against m " + item.margin }, [fill, mark]);
  }

  function renderRun(main) {
    const items = DATA.items;
    let lo = 0;
    let hi = 0; // the bars' common scale: every score and margin of the run, and 0
    for (const i of items) {
      if (i.score === null || i.margin === null) continue;
      lo = Math.min(lo, i.score, i.margin);
      hi = Math.max(hi, i.score, i.margin);
    }
    const pad = 0.05 * (hi - lo || 1);
    lo -= pad;
    hi += pad;
    const c = DATA.counts;
    const summary = [
      badge(count(items.length, "image"), "neutral"),
      badge(c.present + " present", "present"),
      badge(c.absent + " absent", "absent"),
      badge(count(c.error, "error"), c.error ? "error" : "neutral"),
    ];
    if (DATA.has_backend) summary.push(badge(c.changed + " changed by the group step", "changed"));
    main.append(el("p", { cls: "summary", id: "summary" }, summary));
    if (DATA.expressions.length === 1) {
      main.append(el("p", { cls: "expression" }, [el("span", { text: "Expression: " }), el("q", { text: DATA.expressions[0] })]));
    }
    const review = window.GresReview(DATA, { el, badge });
    main.append(review.bar);
    if (DATA.unreadable_lines) {
      main.append(el("p", { cls: "note", text: DATA.unreadable_lines + " lines of records.jsonl are not records (cut by a crash?) and are left out." }));
    }
    const errors = items.filter((i) => i.error);
    if (errors.length) {
      main.append(
        el("details", { cls: "errors", id: "errors", open: "" }, [
          el("summary", { text: count(errors.length, "image") + " failed" }),
          el("ul", {}, errors.map((i) => el("li", {}, [el("strong", { text: DATA.groups[i.group] + "/" + i.name + ": " }), el("span", { text: i.error })]))),
        ]),
      );
    }
    const groupSel = select("group", [["", "all groups (" + DATA.groups.length + ")"], ...DATA.groups.map((g, k) => [String(k), g])]);
    const exprSel = select("expression", [["", "all expressions"], ...DATA.expressions.map((e, k) => [String(k), e])]);
    const filters = [["all", "all"], ["present", "present"], ["absent", "absent"], ["error", "errors"]];
    if (DATA.has_backend) filters.push(["changed", "changed by the group step"]);
    if (!review.off) filters.push(["corrected", "corrected by you"]);
    const filterSel = select("filter", filters);
    const sortSel = select("sort", [["margin", "closest to the margin first"], ["name", "by name"], ["score", "highest score first"]]);
    const search = el("input", { id: "search", type: "search", placeholder: "file name" });
    const controls = [control("Group", groupSel), control("Show", filterSel), control("Sort", sortSel), control("Search", search)];
    if (DATA.expressions.length > 1) controls.splice(1, 0, control("Expression", exprSel));
    main.append(el("div", { cls: "controls" }, controls));
    const grid = pagedGrid(main, (item) => (review.off ? runCard(item, lo, hi) : review.decorate(runCard(item, lo, hi), item)));
    if (!review.off) review.keyboard(grid);

    function update() {
      const group = groupSel.value;
      const expr = exprSel.value;
      const show = filterSel.value;
      const query = search.value.trim().toLowerCase();
      const chosen = items.filter((i) => {
        if (group !== "" && String(i.group) !== group) return false;
        if (expr !== "" && String(i.expression) !== expr) return false;
        if (show === "present" && i.present !== true) return false;
        if (show === "absent" && i.present !== false) return false;
        if (show === "error" && !i.error) return false;
        if (show === "changed" && !(("backend_present" in i) && i.backend_present !== i.present)) return false;
        if (show === "corrected" && !review.corrected(i)) return false;
        return !query || i.name.toLowerCase().includes(query);
      });
      const byName = (a, b) => DATA.groups[a.group].localeCompare(DATA.groups[b.group]) || a.name.localeCompare(b.name);
      const closeness = (i) => (i.score === null ? Infinity : Math.abs(i.score - i.margin));
      if (sortSel.value === "name") chosen.sort(byName);
      else if (sortSel.value === "score") chosen.sort((a, b) => (b.score ?? -Infinity) - (a.score ?? -Infinity) || byName(a, b));
      else chosen.sort((a, b) => closeness(a) - closeness(b) || byName(a, b));
      grid.show(chosen);
    }
    for (const input of [groupSel, exprSel, filterSel, sortSel]) input.addEventListener("change", update);
    search.addEventListener("input", update);
    update();
  }

  function runCard(item, lo, hi) {
    const group = DATA.groups[item.group];
    const verdict = item.error ? badge("error", "error") : item.present ? badge("present", "present") : badge("absent", "absent");
    const open = () =>
      openViewer(group + "/" + item.name, [{ slot: item, label: DATA.expressions[item.expression] }], item.fields);
    const card = el("div", { cls: "card", "data-present": String(item.present) }, [
      el("button", { type: "button", cls: "thumb", title: "open the full-size overlay", on: { click: open } }, [picture(item, item.name)]),
      el("div", { cls: "name", text: item.name, title: group + "/" + item.name }),
      el("div", { cls: "meta" }, [verdict, el("span", { cls: "group", text: group })]),
    ]);
    if (item.error) card.append(el("div", { cls: "error-text", text: item.error }));
    else {
      card.append(scoreBar(item, lo, hi));
      card.append(el("div", { cls: "score", text: "score " + signed(item.score) + " · m " + fmt(item.margin, 2) }));
    }
    if ("backend_present" in item) {
      const changed = item.backend_present !== item.present;
      const backend = "backend alone: " + (item.backend_present ? "present" : "absent") + " (" + fmt(item.backend_score, 2) + ")";
      card.append(el("div", { cls: "backend" + (changed ? " changed" : "") }, [
        changed ? badge("changed by the group step", "changed") : null,
        el("span", { text: backend }),
      ]));
    }
    return card;
  }

  // ---- a gres eval report ----------------------------------------------------------------
  function renderEvaluation(main) {
    const metrics = Object.entries(DATA.metrics);
    main.append(
      el("section", { id: "metrics" }, [
        el("h2", { text: "Metrics (" + DATA.pairs + " pairs)" }),
        el("div", { cls: "metric-grid" }, metrics.map(([k, v]) => el("div", { cls: "metric" }, [el("div", { cls: "metric-value", text: fmt(v, 4) }), el("div", { cls: "metric-name", text: k })]))),
      ]),
    );
    if (DATA.missing) main.append(el("p", { cls: "note", text: DATA.missing + " pairs had no prediction (counted as empty)." }));
    if (DATA.plots.length) {
      main.append(el("section", { id: "plots" }, [el("h2", { text: "Plots" }), el("div", { cls: "plots" }, DATA.plots.filter((p) => SAFE_SRC.test(p)).map((p) => el("img", { src: p, alt: p })))]));
    }
    if (DATA.margin_sweep) {
      const columns = ["acc", "f1", "mIoU", "oIoU", "N-acc", "T-acc"];
      const margins = Object.keys(DATA.margin_sweep).sort((a, b) => Number(a) - Number(b));
      main.append(el("section", { id: "margin-sweep" }, [
        el("h2", { text: "Margin sweep (one forward pass)" }),
        table(margins.map((m) => [m, ...columns.map((c) => fmt(DATA.margin_sweep[m][c], 4))]), ["m", ...columns]),
      ]));
    }
    if (DATA.groups.length) {
      main.append(el("section", { id: "groups" }, [
        el("h2", { text: "Per group" }),
        table(DATA.groups.map((g) => [g.id, ...DATA.group_columns.map((c) => (c === "pairs" ? String(g[c]) : fmt(g[c], 3)))]), ["group", ...DATA.group_columns]),
      ]));
    }
    const galleries = el("section", { id: "galleries" }, [el("h2", { text: "Galleries" })]);
    if (DATA.gallery_note) galleries.append(el("p", { cls: "note", text: DATA.gallery_note }));
    for (const gallery of DATA.galleries) {
      const box = el("div", { cls: "gallery", id: "gallery-" + gallery.id });
      const shown = gallery.items.length < gallery.total ? " (the first " + gallery.items.length + ")" : "";
      box.append(el("h3", { text: gallery.title + ": " + gallery.total + shown }));
      galleries.append(box);
      pagedGrid(box, pairCard).show(gallery.items);
    }
    main.append(galleries);
    main.append(el("details", { cls: "settings" }, [el("summary", { text: "Settings" }), table(Object.entries(DATA.settings))]));
    if (DATA.warnings.length) {
      main.append(el("details", { cls: "warnings" }, [el("summary", { text: DATA.warnings.length + " warnings" }), el("ul", {}, DATA.warnings.map((w) => el("li", { text: w })))]));
    }
  }

  function pairCard(item) {
    const pictures = [{ slot: item.truth, label: "ground truth" }, { slot: item.prediction, label: "prediction" }];
    const open = () => openViewer(item.group + "/" + item.name, pictures, [["expression", item.expression], ["IoU", fmt(item.iou, 4)]]);
    return el("div", { cls: "card pair" }, [
      el("button", { type: "button", cls: "thumb two", title: "open full size", on: { click: open } }, pictures.map((p) => el("figure", {}, [picture(p.slot, p.label), el("figcaption", { text: p.label })]))),
      el("div", { cls: "name", text: item.group + "/" + item.name }),
      el("div", { cls: "expression-text", text: item.expression }),
      el("div", { cls: "score", text: "IoU " + fmt(item.iou, 3) }),
    ]);
  }

  // ---- a GRD dataset ---------------------------------------------------------------------
  function renderDataset(main) {
    const c = DATA.counts;
    main.append(el("p", { cls: "summary", id: "summary" }, [
      badge(c.groups + " groups", "neutral"),
      badge(c.images + " images", "neutral"),
      badge(c.pairs + " pairs", "neutral"),
      badge(count(c.errors, "error"), c.errors ? "error" : "neutral"),
      badge(count(c.warnings, "warning"), c.warnings ? "warning" : "neutral"),
    ]));
    if (DATA.license) main.append(el("p", { cls: "note", text: "Licence: " + DATA.license }));
    const global = findingsList(DATA.findings);
    if (global) main.append(el("section", { id: "dataset-findings" }, [el("h2", { text: "Findings about the whole dataset" }), global]));
    if (!DATA.groups.length) return;
    const issues = (g) => g.findings.length + g.images.reduce((n, i) => n + i.findings.length, 0) +
      g.expressions.reduce((n, e) => n + e.findings.length + e.targets.reduce((m, t) => m + t.findings.length, 0), 0);
    const label = (g) => g.id + (g.split ? " [" + g.split + "]" : "") + (issues(g) ? " ⚠ " + issues(g) : "");
    const groupSel = select("group", DATA.groups.map((g, k) => [String(k), label(g)]));
    const search = el("input", { id: "search", type: "search", placeholder: "group id or expression" });
    const prev = el("button", { type: "button", text: "‹ previous group" });
    const next = el("button", { type: "button", text: "next group ›" });
    main.append(el("div", { cls: "controls" }, [control("Group", groupSel), prev, next, control("Search", search)]));
    const view = el("div", { id: "group-view" });
    main.append(view);
    function showGroup() {
      const g = DATA.groups[Number(groupSel.value)];
      if (!g) return view.replaceChildren(el("p", { text: "No group matches." }));
      const parts = [el("h2", { text: "Group " + g.id + (g.split ? " (" + g.split + ")" : "") }), findingsList(g.findings)];
      parts.push(el("h3", { text: "Images (" + g.images.length + ")" }));
      parts.push(el("div", { cls: "grid" }, g.images.map((img) => datasetCard(img, img.name, null, img.findings))));
      const byId = Object.fromEntries(g.images.map((img) => [img.id, img]));
      for (const e of g.expressions) {
        const present = e.targets.filter((t) => t.present).length;
        parts.push(el("h3", { cls: "expression-title" }, [el("q", { text: e.text }), el("span", { cls: "count", text: " " + e.id + " · present in " + present + " of " + e.targets.length })]));
        parts.push(findingsList(e.findings));
        parts.push(el("div", { cls: "grid" }, e.targets.map((t) => {
          const img = byId[t.image] || { name: t.image };
          return datasetCard(t.present ? t : img, img.name, t.present, t.findings, e.text);
        })));
      }
      view.replaceChildren(...parts.filter(Boolean));
    }
    function move(step) {
      const options = [...groupSel.options].filter((o) => !o.hidden);
      const at = options.findIndex((o) => o.value === groupSel.value);
      const to = options[at + step];
      if (to) { groupSel.value = to.value; showGroup(); }
    }
    search.addEventListener("input", () => {
      const query = search.value.trim().toLowerCase();
      let first = null;
      DATA.groups.forEach((g, k) => {
        const hit = !query || g.id.toLowerCase().includes(query) || g.expressions.some((e) => e.text.toLowerCase().includes(query));
        groupSel.options[k].hidden = !hit;
        if (hit && first === null) first = k;
      });
      if (first !== null && groupSel.options[Number(groupSel.value)].hidden) groupSel.value = String(first);
      showGroup();
    });
    groupSel.addEventListener("change", showGroup);
    prev.addEventListener("click", () => move(-1));
    next.addEventListener("click", () => move(1));
    showGroup();
  }

  function datasetCard(slot, name, present, findings, expression) {
    const open = () => openViewer(name, [{ slot: slot, label: expression || name }], expression ? [["expression", expression], ["target", present ? "present" : "absent"]] : []);
    const card = el("div", { cls: "card" + (present === false ? " absent-target" : ""), "data-present": present === null ? null : String(present) }, [
      el("button", { type: "button", cls: "thumb", title: "open full size", on: { click: open } }, [picture(slot, name)]),
      el("div", { cls: "name", text: name }),
    ]);
    if (present !== null) card.append(el("div", { cls: "meta" }, [present ? badge("present", "present") : badge("absent", "absent")]));
    const list = findingsList(findings);
    if (list) card.append(list);
    return card;
  }

  // ---- start -----------------------------------------------------------------------------
  const main = document.getElementById("main");
  main.replaceChildren();
  if (!DATA) {
    main.append(el("p", { cls: "error-text", text: "data.js is missing: rebuild the site with gres view." }));
    return;
  }
  document.title = DATA.title;
  document.getElementById("title").textContent = DATA.title;
  document.getElementById("subtitle").textContent = DATA.source + " · built " + DATA.created;
  const renderers = { run: renderRun, evaluation: renderEvaluation, dataset: renderDataset };
  renderers[DATA.kind](main);
  document.body.setAttribute("data-ready", "true");
})();
