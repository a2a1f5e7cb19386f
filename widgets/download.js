// Browser download of a file produced in the kernel (e.g. an exported trace).
// The kernel sets `filename`, `content` and `mime`, then bumps `request`; each new
// request value triggers one download of the current content.
function render({ model, el }) {
  el.classList.add("fd-download");
  const status = document.createElement("span");
  status.className = "fd-download-status";
  el.appendChild(status);

  function download() {
    const content = model.get("content");
    const filename = model.get("filename") || "download.json";
    const blob = new Blob([content], { type: model.get("mime") || "application/json" });
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = filename;
    a.style.display = "none";
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    status.textContent = `downloaded ${filename} (${blob.size.toLocaleString()} bytes)`;
    model.set("delivered", model.get("request"));
    model.save_changes();
  }

  model.on("change:request", download);
}

export default { render };
