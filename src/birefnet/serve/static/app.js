// BiRefNet web page: pick or drop an image, send it to POST /v1/remove-background, show the
// result on a checkerboard with a before/after slider, and offer it for download.
// Plain JavaScript, no build step; every request goes to the server that served this page.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const fileInput = $("file");
  const drop = $("drop");
  const runButton = $("run");
  const statusLine = $("status");
  const modelSelect = $("model");
  const outputSelect = $("output");
  const bgLabel = $("bg-label");
  const bgInput = $("bg");
  const refineBox = $("refine");
  const viewer = $("viewer");
  const before = $("before");
  const after = $("after");
  const beforeClip = $("before-clip");
  const handle = $("handle");
  const slider = $("slider");
  const download = $("download");

  let currentFile = null;
  let beforeUrl = null;
  let afterUrl = null;

  function setStatus(text, isError) {
    statusLine.textContent = text;
    statusLine.classList.toggle("error", Boolean(isError));
  }

  function baseName(name) {
    const dot = name.lastIndexOf(".");
    return (dot > 0 ? name.slice(0, dot) : name) || "image";
  }

  async function loadModels() {
    try {
      const response = await fetch("v1/models");
      const data = await response.json();
      for (const m of data.models) {
        const option = document.createElement("option");
        option.value = m.name;
        option.textContent = m.name + (m.backbone ? " (" + m.backbone + ")" : "");
        option.selected = m.default;
        modelSelect.appendChild(option);
      }
    } catch (err) {
      setStatus("Could not list the models: " + err, true);
    }
  }

  function pick(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      setStatus(file.name + " is not an image (" + file.type + ").", true);
      return;
    }
    currentFile = file;
    if (beforeUrl) URL.revokeObjectURL(beforeUrl);
    beforeUrl = URL.createObjectURL(file);
    before.src = beforeUrl;
    runButton.disabled = false;
    $("drop-text").textContent = file.name;
    run();
  }

  function updateSlider() {
    const pct = Number(slider.value);
    // Left of the handle: the original ("before"); right: the result ("after").
    beforeClip.style.clipPath = "inset(0 " + (100 - pct) + "% 0 0)";
    handle.style.left = pct + "%";
  }

  async function run() {
    if (!currentFile) return;
    const form = new FormData();
    form.append("file", currentFile, currentFile.name);
    const output = outputSelect.value;
    form.append("output", output);
    form.append("format", "png");
    if (output === "composite") form.append("bg_color", bgInput.value);
    if (refineBox.checked) form.append("refine_foreground", "true");
    if (modelSelect.value) form.append("model", modelSelect.value);

    runButton.disabled = true;
    setStatus("Working on " + currentFile.name + "...");
    const started = performance.now();
    try {
      const response = await fetch("v1/remove-background", { method: "POST", body: form });
      if (!response.ok) {
        let message = response.status + " " + response.statusText;
        try {
          const body = await response.json();
          if (body.detail) message = body.detail;
        } catch (_) { /* not JSON */ }
        throw new Error(message);
      }
      const blob = await response.blob();
      if (afterUrl) URL.revokeObjectURL(afterUrl);
      afterUrl = URL.createObjectURL(blob);
      await new Promise((resolve, reject) => {
        after.onload = resolve;
        after.onerror = () => reject(new Error("the result could not be displayed"));
        after.src = afterUrl;
      });
      $("compare").style.aspectRatio = after.naturalWidth + " / " + after.naturalHeight;
      download.href = afterUrl;
      download.download = baseName(currentFile.name) + "_" + output + ".png";
      viewer.hidden = false;
      updateSlider();
      const seconds = ((performance.now() - started) / 1000).toFixed(2);
      const model = response.headers.get("X-Model") || modelSelect.value;
      setStatus("Done in " + seconds + " s with " + model + ". Drag the slider to compare.");
      document.body.dataset.result = "ready";
    } catch (err) {
      setStatus("Failed: " + err.message, true);
      document.body.dataset.result = "error";
    } finally {
      runButton.disabled = false;
    }
  }

  fileInput.addEventListener("change", () => pick(fileInput.files[0]));
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); fileInput.click(); }
  });
  ["dragenter", "dragover"].forEach((type) =>
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((type) =>
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => pick(e.dataTransfer.files[0]));
  // Pasting an image (Ctrl+V) works too.
  window.addEventListener("paste", (e) => {
    const item = Array.from(e.clipboardData.items).find((i) => i.type.startsWith("image/"));
    if (item) pick(item.getAsFile());
  });

  outputSelect.addEventListener("change", () => {
    bgLabel.hidden = outputSelect.value !== "composite";
    if (currentFile) run();
  });
  bgInput.addEventListener("change", () => { if (currentFile) run(); });
  refineBox.addEventListener("change", () => { if (currentFile) run(); });
  modelSelect.addEventListener("change", () => { if (currentFile) run(); });
  runButton.addEventListener("click", run);
  slider.addEventListener("input", updateSlider);

  loadModels();
})();
