// A notification from the kernel (an anywidget module, no build step): a toast wherever the notebook
// is scrolled, and a banner in the cell's output. The toast is JupyterLab's own (its
// `apputils:notify` command) when the page exposes the application (`window.jupyterapp`: JupyterLab
// started with `--LabApp.expose_app_in_browser` or in dev mode); otherwise one drawn in
// JupyterLab's colours at the same place. It pops once per notice: a view made again (the output
// re-rendered, the notebook reopened while the kernel runs) only shows the banner.

const AUTO_CLOSE_MS = 10000;
const COLORS = { info: "var(--jp-info-color1, #0288d1)", success: "var(--jp-success-color1, #388e3c)",
                 warning: "var(--jp-warn-color1, #f57c00)", error: "var(--jp-error-color1, #d32f2f)" };

function stack() {
  let found = document.getElementById("mito-notices");
  if (!found) {
    found = document.createElement("div");
    found.id = "mito-notices";
    found.style.cssText = "position:fixed;right:16px;bottom:40px;z-index:10000;display:flex;flex-direction:column;gap:8px;max-width:420px";
    document.body.appendChild(found);
  }
  return found;
}

function drawnToast(message, kind) {
  const toast = document.createElement("div");
  toast.className = "mito-notice-toast";
  toast.setAttribute("role", "status");
  toast.style.cssText = `background:var(--jp-layout-color1, white);color:var(--jp-ui-font-color1, black);` +
    `border:1px solid var(--jp-border-color1, #bdbdbd);border-left:5px solid ${COLORS[kind] || COLORS.info};border-radius:4px;` +
    `box-shadow:var(--jp-elevation-z4, 0 2px 8px rgba(0,0,0,.3));padding:8px 28px 8px 10px;position:relative;` +
    `font-family:var(--jp-ui-font-family, sans-serif);font-size:var(--jp-ui-font-size1, 13px);white-space:pre-wrap`;
  toast.textContent = message;
  const close = document.createElement("button");
  close.textContent = "×";
  close.title = "Dismiss";
  close.style.cssText = "position:absolute;top:2px;right:4px;border:none;background:none;color:inherit;cursor:pointer;font-size:16px";
  close.onclick = () => toast.remove();
  toast.appendChild(close);
  stack().appendChild(toast);
  setTimeout(() => toast.remove(), AUTO_CLOSE_MS);
}

function toast(message, kind) {
  const app = window.jupyterapp;
  if (app && app.commands && app.commands.hasCommand("apputils:notify")) {
    app.commands.execute("apputils:notify", { message, type: kind, options: { autoClose: AUTO_CLOSE_MS } });
  } else {
    drawnToast(message, kind);
  }
}

function render({ model, el }) {
  el.classList.add("mito-notice");
  el.innerHTML = model.get("banner");
  if (!model.get("shown")) {
    model.set("shown", true);
    model.save_changes();
    toast(model.get("message"), model.get("kind"));
  }
}

export default { render };
