// The page of `imgcls serve`: choose or drop an image, show it, post it to /predict, draw the top predictions as
// bars (as many as the model has, up to five); a multi-label model's label set is named above them. Then post it
// to /explain and show the Grad-CAM overlay of the top class beside them.
"use strict";

const $ = (id) => document.getElementById(id);

async function showModel() {
  try {
    const res = await fetch("/model");
    const m = await res.json();
    const [c, h, w] = m.input_size;
    $("model").textContent = `${m.name} · ${m.num_classes} classes · ${c}×${h}×${w} · ${m.backend} ${m.precision}`;
  } catch (err) {
    $("model").textContent = "model information unavailable";
  }
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "muted";
}

function drawBars(predictions) {
  const list = $("bars");
  list.replaceChildren();
  for (const p of predictions) {
    const li = document.createElement("li");
    const row = document.createElement("div");
    row.className = "row";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = p.label; // textContent: labels are data, never markup
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${(100 * p.probability).toFixed(1)}%`;
    row.append(label, pct);
    const track = document.createElement("div");
    track.className = "track";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(0, Math.min(100, 100 * p.probability))}%`;
    track.append(bar);
    li.append(row, track);
    list.append(li);
  }
}

let previewUrl = null;
let overlayUrl = null;

function hideExplanation() {
  $("explain").hidden = true;
  if (overlayUrl) URL.revokeObjectURL(overlayUrl);
  overlayUrl = null;
}

async function explain(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  const note = $("explain-note");
  try {
    const res = await fetch("/explain?topk=5", { method: "POST", body: form });
    const body = await res.json();
    if (!res.ok) {
      $("explain-title").textContent = "No explanation map";
      $("overlay").hidden = true;
      note.textContent = body.detail || res.statusText;
      $("explain").hidden = false;
      return;
    }
    // The PNG arrives as base64; a blob: URL shows it (the page's policy allows no data: images).
    const bytes = Uint8Array.from(atob(body.overlay), (ch) => ch.charCodeAt(0));
    overlayUrl = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
    const img = $("overlay");
    img.src = overlayUrl;
    img.alt = `Grad-CAM for ${body.class.label}`;
    img.hidden = false;
    $("explain-title").textContent = `Where it looked for “${body.class.label}” (Grad-CAM)`;
    note.textContent =
      `Layer ${body.layer}, on the ${body.width}×${body.height} network input; ` +
      "bright: regions that raised this class's score.";
    $("explain").hidden = false;
  } catch (err) {
    $("explain-title").textContent = "No explanation map";
    note.textContent = `request failed (${err})`;
    $("explain").hidden = false;
  }
}

async function classify(file) {
  if (!file) return;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  const preview = $("preview");
  preview.src = previewUrl;
  preview.alt = file.name;
  preview.hidden = false;
  $("hint").hidden = true;
  $("bars").replaceChildren();
  hideExplanation();
  setStatus(`Classifying ${file.name}…`);
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const res = await fetch("/predict?topk=5", { method: "POST", body: form });
    const body = await res.json();
    if (!res.ok) {
      setStatus(`${file.name}: ${body.detail || res.statusText}`, true);
      return;
    }
    const n = body.predictions.length;
    const top = n === 1 ? "Top prediction" : `Top-${n} predictions`;
    if (Array.isArray(body.labels)) {
      const chosen = body.labels.length ? body.labels.join(", ") : "none above their thresholds";
      setStatus(`${file.name}: labels ${chosen} · ${top.toLowerCase()} below`);
    } else {
      setStatus(`${top} for ${file.name}`);
    }
    drawBars(body.predictions);
    await explain(file);
  } catch (err) {
    setStatus(`${file.name}: request failed (${err})`, true);
  }
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => classify(e.target.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => classify(e.dataTransfer.files[0]));
  showModel();
}

document.addEventListener("DOMContentLoaded", init);
