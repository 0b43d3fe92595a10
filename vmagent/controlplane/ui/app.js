// vmagent-cp dashboard: read-only views of the JSON API, refreshed by polling (?refresh=MS, default 2000).
// Every value is inserted as text (never as HTML): workload names and messages come from the mesh.
"use strict";

const REFRESH_MS = Number(new URLSearchParams(location.search).get("refresh")) || 2000;
const SVG_NS = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function badge(value) {
  return el("span", { class: "badge " + value }, value);
}

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))), el("tbody", {}, ...rows));
}

async function getJson(path) {
  const resp = await fetch(path, { cache: "no-store" });
  if (!resp.ok) throw new Error(path + ": HTTP " + resp.status);
  return resp.json();
}

function untilExpiry(iso) {
  if (!iso) return "";
  const hours = (Date.parse(iso) - Date.now()) / 3600e3;
  return iso + (hours < 0 ? " (expired)" : " (in " + hours.toFixed(1) + " h)");
}

function fmtRate(rps) {
  return rps.toFixed(rps < 10 ? 2 : 0) + " req/s";
}

function edgeLabel(e) {
  const p99 = e.p99_ms == null ? "-" : e.p99_ms.toFixed(1) + " ms";
  return fmtRate(e.rps) + ", " + (100 * e.error_rate).toFixed(1) + " % err, p99 " + p99;
}

function workloadsView(workloads) {
  const rows = workloads.map((w) =>
    el("tr", { "data-workload": w.namespace + "/" + w.name, "data-group": w.namespace + "/" + w.group, "data-health": w.health },
      el("td", {}, el("a", { href: "#/vm/" + encodeURIComponent(w.namespace) + "/" + encodeURIComponent(w.name) }, w.namespace + "/" + w.name)),
      el("td", {}, w.group),
      el("td", {}, w.address),
      el("td", { class: "health" }, badge(w.health)),
      el("td", {}, w.agent_version || "?"),
      el("td", {}, untilExpiry(w.cert_expiry)),
      el("td", { class: "xds" }, badge(w.xds_state)),
      el("td", { class: "error" }, w.last_error || "")));
  return [
    el("h2", {}, "Workloads (" + workloads.length + ")"),
    table(["Workload", "Group", "Address", "Health", "Agent", "Certificate expiry", "xDS", "Last error"], rows),
  ];
}

function graphSvg(graph, focus) {
  const width = 760, height = 420, cx = width / 2, cy = height / 2, r = Math.min(cx, cy) - 70;
  const root = svg("svg", { id: "graph", width, height, viewBox: "0 0 " + width + " " + height, role: "img" });
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto" });
  marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#5b6b7c" }));
  defs.append(marker);
  root.append(defs);
  const nodes = graph.nodes.filter((n) => !focus || n === focus || graph.edges.some((e) => (e.source === n && e.destination === focus) || (e.destination === n && e.source === focus)));
  const pos = {};
  nodes.forEach((n, i) => {
    const a = (2 * Math.PI * i) / Math.max(nodes.length, 1) - Math.PI / 2;
    pos[n] = nodes.length === 1 ? [cx, cy] : [cx + r * Math.cos(a), cy + r * Math.sin(a)];
  });
  for (const e of graph.edges) {
    if (!(e.source in pos) || !(e.destination in pos)) continue;
    const [x1, y1] = pos[e.source], [x2, y2] = pos[e.destination];
    const len = Math.hypot(x2 - x1, y2 - y1) || 1, ux = (x2 - x1) / len, uy = (y2 - y1) / len;
    const g = svg("g", { class: "edge" + (e.error_rate > 0 ? " failing" : ""), "data-source": e.source, "data-destination": e.destination, "data-rps": e.rps, "data-error-rate": e.error_rate });
    g.append(svg("line", { x1: x1 + ux * 26, y1: y1 + uy * 26, x2: x2 - ux * 26, y2: y2 - uy * 26, "marker-end": "url(#arrow)" }));
    // the label beside the line's middle, on its right-hand side, never across it
    const side = Math.abs(ux) < 0.5 ? { dx: 10, dy: 4, anchor: "start" } : { dx: 0, dy: -10, anchor: "middle" };
    g.append(svg("text", { x: (x1 + x2) / 2 + side.dx, y: (y1 + y2) / 2 + side.dy, "text-anchor": side.anchor }, edgeLabel(e)));
    root.append(g);
  }
  for (const n of nodes) {
    const g = svg("g", { class: "node", "data-node": n });
    g.append(svg("circle", { cx: pos[n][0], cy: pos[n][1], r: 24 }));
    g.append(svg("text", { x: pos[n][0] + 30, y: pos[n][1] + 4, "text-anchor": "start" }, n));
    root.append(g);
  }
  return root;
}

function edgeTable(edges) {
  return table(["Source", "Destination", "Rate", "Error rate", "p99", "Requests (total)"], edges.map((e) =>
    el("tr", { "data-edge": e.source + "->" + e.destination },
      el("td", {}, e.source), el("td", {}, e.destination), el("td", {}, fmtRate(e.rps)),
      el("td", {}, (100 * e.error_rate).toFixed(1) + " %"), el("td", {}, e.p99_ms == null ? "-" : e.p99_ms + " ms"),
      el("td", {}, e.requests_total))));
}

function graphView(graph) {
  const failed = graph.scrapes.filter((s) => s.error);
  return [
    el("h2", {}, "Service graph"),
    el("p", { class: "muted" }, "Requests seen by the destination's agent (reporter=destination) over the last " + graph.window_seconds + " s, " + graph.source + " every " + graph.interval_seconds + " s."),
    graphSvg(graph, null),
    edgeTable(graph.edges),
    ...(failed.length ? [el("h2", {}, "Scrape errors"), table(["Workload", "Address", "Error"], failed.map((s) => el("tr", {}, el("td", {}, s.workload), el("td", {}, s.address), el("td", { class: "error" }, s.error))))] : []),
  ];
}

function configView(config) {
  const rows = config.objects.map((o) =>
    el("tr", { "data-object": o.kind + " " + o.namespace + "/" + o.name },
      el("td", {}, o.kind), el("td", {}, o.namespace + "/" + o.name), el("td", {}, o.source),
      el("td", { class: "error" }, o.issues.join("; "))));
  const issues = config.errors.map((m) => el("li", { class: "error" }, m)).concat(config.warnings.map((m) => el("li", {}, m)));
  return [
    el("h2", {}, "Validation issues (" + config.errors.length + " errors, " + config.warnings.length + " warnings)"),
    issues.length ? el("ul", { id: "issues" }, ...issues) : el("p", { id: "issues" }, "None: every config file and object is valid."),
    el("h2", {}, "Config objects in force (" + config.objects.length + ")"),
    table(["Kind", "Object", "Source", "Issues"], rows),
  ];
}

function detailView(ns, name, workloads, graph) {
  const w = workloads.find((x) => x.namespace === ns && x.name === name);
  if (!w) return [el("h2", {}, ns + "/" + name), el("p", { class: "error" }, "No such workload (it may have left the mesh).")];
  const fields = [
    ["Health", badge(w.health)], ["Health message", w.health_message || ""], ["Probe", w.probe ? "yes" : "no"],
    ["Group", w.namespace + "/" + w.group], ["Address", w.address], ["Hostname", w.hostname || ""],
    ["Identity", w.spiffe_id], ["Agent version", w.agent_version || "?"], ["Connected", String(w.connected)],
    ["Connected at", w.connected_at || ""], ["Last heartbeat", w.last_heartbeat_at || ""],
    ["Certificate serial", w.cert_serial || ""], ["Certificate expiry", untilExpiry(w.cert_expiry)],
    ["In EDS", String(w.in_eds)], ["Labels", Object.entries(w.labels || {}).map(([k, v]) => k + "=" + v).join(", ")],
    ["xDS", badge(w.xds_state)], ["Last error", w.last_error || ""],
  ];
  const dl = el("dl", { id: "detail", "data-health": w.health });
  for (const [k, v] of fields) dl.append(el("dt", {}, k), el("dd", {}, v));
  const types = [];
  for (const s of w.xds) for (const [t, v] of Object.entries(s.types || {}))
    types.push(el("tr", {}, el("td", {}, t), el("td", {}, badge(v.state)), el("td", {}, v.sent_version || ""), el("td", {}, v.acked_version || ""), el("td", { class: "error" }, v.error || "")));
  const group = w.namespace + "/" + w.group;
  const edges = graph.edges.filter((e) => e.source === group || e.destination === group);
  return [
    el("h2", {}, "VM " + w.namespace + "/" + w.name), dl,
    el("h2", {}, "xDS sync"), table(["Type", "State", "Sent", "Acked", "Error"], types),
    el("h2", {}, "Traffic of " + group), graphSvg(graph, group), edgeTable(edges),
  ];
}

async function render() {
  const route = (location.hash || "#/workloads").slice(2).split("/").map(decodeURIComponent);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("current", a.getAttribute("href") === "#/" + route[0]);
  let content;
  if (route[0] === "graph") content = graphView(await getJson("/api/v1/dashboard/graph"));
  else if (route[0] === "config") content = configView(await getJson("/api/v1/dashboard/config"));
  else if (route[0] === "vm") {
    const [workloads, graph] = await Promise.all([getJson("/api/v1/dashboard/workloads"), getJson("/api/v1/dashboard/graph")]);
    content = detailView(route[1], route[2], workloads, graph);
  } else content = workloadsView(await getJson("/api/v1/dashboard/workloads"));
  document.getElementById("view").replaceChildren(...content);
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

let timer = null;
async function refresh() {
  clearTimeout(timer);
  const problem = document.getElementById("problem");
  try {
    await render();
    problem.hidden = true;
  } catch (err) {
    problem.textContent = "Cannot refresh: " + err.message + " (retrying)";
    problem.hidden = false;
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

window.addEventListener("hashchange", refresh);
refresh();
