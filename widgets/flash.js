// Flash messages: the kernel appends {level, text, id} to `messages`; each shows as a
// toast that fades after `timeout_ms` (errors stay until clicked).
function render({ model, el }) {
  el.classList.add("fd-flash-area");
  const shown = new Set();

  function show() {
    for (const msg of model.get("messages")) {
      if (shown.has(msg.id)) continue;
      shown.add(msg.id);
      const toast = document.createElement("div");
      toast.className = `fd-flash fd-flash-${msg.level}`;
      toast.textContent = msg.text;
      toast.title = "click to dismiss";
      toast.addEventListener("click", () => toast.remove());
      el.appendChild(toast);
      if (msg.level !== "error") {
        setTimeout(() => toast.classList.add("fd-flash-fade"), model.get("timeout_ms"));
        setTimeout(() => toast.remove(), model.get("timeout_ms") + 600);
      }
    }
  }

  model.on("change:messages", show);
  show();
}

export default { render };
