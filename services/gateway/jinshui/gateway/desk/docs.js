// A self-contained reference built from /openapi.json (no Swagger UI from a CDN).
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function resolve(spec, schema) {
  let s = schema;
  for (let i = 0; s && s.$ref && i < 20; i++) s = s.$ref.split("/").slice(1).reduce((o, k) => o && o[k], spec);
  return s || {};
}

function example(spec, media) {
  if (!media) return null;
  if (media.example !== undefined) return media.example;
  if (media.examples) return Object.values(media.examples)[0].value;
  const s = resolve(spec, media.schema);
  if (s.example !== undefined) return s.example;
  if (Array.isArray(s.examples) && s.examples.length) return s.examples[0];
  return null;
}

function schemaName(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.type === "array") return `${schemaName(schema.items)}[]`;
  if (schema.anyOf) return schema.anyOf.map(schemaName).join(" | ");
  return schema.type || "";
}

function operation(spec, path, method, op) {
  const params = (op.parameters || []).map((p) =>
    el("tr", {}, el("td", {}, p.name), el("td", {}, p.in), el("td", {}, schemaName(p.schema)),
      el("td", {}, p.required ? "required" : ""), el("td", {}, p.description || "")),
  );
  const body = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
  const bodyExample = example(spec, body);
  const responses = Object.entries(op.responses || {}).map(([code, r]) => {
    const media = r.content && (r.content["application/json"] || Object.values(r.content)[0]);
    const ex = example(spec, media);
    return el("div", {}, el("b", {}, code), ` ${r.description || ""} `, media ? schemaName(media.schema) : "",
      ex !== null ? el("pre", {}, JSON.stringify(ex, null, 2)) : null);
  });
  return el("details", { "data-text": `${method} ${path} ${op.summary || ""} ${(op.tags || []).join(" ")}` },
    el("summary", {}, el("span", { class: `method ${method}` }, method), el("span", { class: "path" }, path),
      el("span", {}, op.summary || "")),
    el("div", { class: "body" },
      op.description ? el("p", {}, op.description) : null,
      params.length ? el("table", {}, el("tr", {}, ["name", "in", "type", "", ""].map((h) => el("th", {}, h))), params) : null,
      body ? el("div", {}, el("b", {}, "body "), schemaName(body.schema),
        bodyExample !== null ? el("pre", {}, JSON.stringify(bodyExample, null, 2)) : null) : null,
      responses));
}

async function main() {
  const spec = await (await fetch("/openapi.json")).json();
  document.getElementById("title").textContent = `${spec.info.title} ${spec.info.version}`;
  const groups = new Map();
  for (const [path, item] of Object.entries(spec.paths || {})) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags && op.tags[0]) || path.split("/")[2] || "other";
      if (!groups.has(tag)) groups.set(tag, []);
      groups.get(tag).push(operation(spec, path, method.toUpperCase(), op));
    }
  }
  const ops = document.getElementById("ops");
  ops.replaceChildren(...[...groups].map(([tag, items]) => el("section", {}, el("h2", {}, tag), items)));
  document.getElementById("filter").addEventListener("input", (e) => {
    const q = e.target.value.toLowerCase();
    for (const d of ops.querySelectorAll("details")) d.hidden = q && !d.dataset.text.toLowerCase().includes(q);
  });
}

main().catch((e) => {
  document.getElementById("ops").textContent = `Could not load /openapi.json: ${e}`;
});
