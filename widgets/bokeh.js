// A Bokeh document shown in a notebook, kept in the widget *model* rather than in its
// views, so that it follows the kernel whatever the views do.
//
// The kernel sends the document once (the `bundle` trait: {doc, root}) and then each
// change as a custom message {type: "patch", content, buffers}. The model applies every
// patch to its own copy of the document as it arrives, whether a view exists or not
// (anywidget hands a model its messages in order, once `initialize` has run), and each
// view renders a copy of that document made when the view is created, patched alongside.
// Nothing here waits for the kernel: kernel-to-page messages travel on iopub, which a
// busy kernel still sends. Changes made in the page (a selection, a range) go to the
// kernel as {type: "event", event}.
//
// Patches are numbered (`seq`), and the bundle says the number of the last patch it
// contains. A page that connects asks the kernel for the widgets' state and builds their
// models from it; a patch sent meanwhile reaches no model (the front end drops a message
// for a comm it does not know yet), and a missed stream would leave the page's data short
// for good. So the model applies only the next patch in line: one already in its document
// is skipped, and after a gap it drops what follows and asks for the whole document
// ({type: "resync"}), which comes back as a new bundle.

const PANES = new Map(); // pane_id -> the model's state

function waitForBokeh(timeoutMs) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const poll = () => {
      if (window.Bokeh && window.Bokeh.require) return resolve(window.Bokeh);
      if (Date.now() - t0 > timeoutMs) return reject(new Error("BokehJS is not loaded"));
      setTimeout(poll, 50);
    };
    poll();
  });
}

function unlist(Bokeh, doc) {
  const docs = Bokeh.documents;
  const i = docs ? docs.indexOf(doc) : -1;
  if (i >= 0) docs.splice(i, 1);
}

function toBuffers(ids, buffers) {
  const out = new Map();
  ids.forEach((id, i) => {
    const b = buffers[i];
    out.set(id, b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
  });
  return out;
}

function copyBuffers(buffers) {
  const out = new Map();
  for (const [id, b] of buffers) out.set(id, b.slice(0));
  return out;
}

// Bokeh lays a view out as it builds it; a table built in an element not yet in the
// page (the front end attaches a widget's element after rendering it, and a widget in
// a tab not shown yet may wait long) fails to find its stylesheet, and a plot built so
// misses child views (BokehJS then fails with "cannot find a view for ..." at its next
// layout). Wait for the element, however long, unless the view goes away meanwhile.
function connected(el, alive) {
  return new Promise((resolve) => {
    const poll = () => (el.isConnected || !alive() ? resolve() : setTimeout(poll, 50));
    poll();
  });
}

async function show(state, view) {
  const { Bokeh } = state;
  await connected(view.el, () => state.views.has(view));
  if (!state.views.has(view)) return;
  const { Document } = Bokeh.require("document");
  const { add_document_standalone } = Bokeh.require("embed/standalone");
  hide(state, view);
  const token = view.token;
  const doc = Document.from_json(state.master.to_json());
  const container = document.createElement("div");
  container.className = "fd-bokeh-pane";
  view.el.replaceChildren(container);
  view.doc = doc;
  doc.on_change((event) => {
    if (view.blocked || view.doc !== doc) return;
    const { Serializer } = Bokeh.require("core/serialization");
    try {
      state.model.send({ type: "event", event: new Serializer().encode(event) });
    } catch (err) {
      console.debug("foundation pane: event not sent", err);
    }
  });
  const manager = await add_document_standalone(doc, container);
  if (view.token !== token || !state.views.has(view)) {
    // hidden, removed or shown again while its views were being built: these are stale
    setTimeout(() => manager.clear(), REMOVE_AFTER_MS);
    unlist(Bokeh, doc);
    return;
  }
  view.manager = manager;
}

// How long the views of a document no longer shown live on before they are removed:
// BokehJS finishes a change of a plot's renderers asynchronously (it builds the new
// renderers' views, then lays the plot out again), and a plot view removed meanwhile
// fails there with "cannot find a view for ...". The old document gets no changes any
// more, so what it still has pending ends within this delay.
const REMOVE_AFTER_MS = 5000;

// Removes what a view shows; a show() still building its views for it drops them when
// it finishes (the token it started with is no longer the view's).
function hide(state, view) {
  view.token = (view.token || 0) + 1;
  if (view.manager != null) {
    const manager = view.manager;
    setTimeout(() => manager.clear(), REMOVE_AFTER_MS);
  }
  if (view.doc != null) unlist(state.Bokeh, view.doc);
  view.manager = null;
  view.doc = null;
}

function rebuild(state) {
  const { Document } = state.Bokeh.require("document");
  const { doc, seq } = JSON.parse(state.model.get("bundle"));
  state.master = Document.from_json(doc);
  state.seq = seq == null ? null : seq;
  state.resyncing = false;
  unlist(state.Bokeh, state.master); // the page's documents are the rendered ones
  return Promise.all([...state.views].map((view) => show(state, view)));
}

// Drops the patches that follow until the whole document comes again (a new bundle).
function resync(state, why, got) {
  console.warn(`foundation pane: ${why}; asking the kernel for the whole document`);
  state.resyncing = true;
  state.model.send({ type: "resync", have: state.seq, got });
}

// Applies a patch to the model's document and to each view's. A view whose patch fails
// is rendered again from the model's document; the returned promise waits for that, so
// the next patch is not applied to a document whose views are still being built.
function patch(state, msg, buffers) {
  const numbered = msg.seq != null && state.seq != null;
  if (numbered) {
    if (msg.seq <= state.seq || state.resyncing) return null; // in the (coming) document
    if (msg.seq !== state.seq + 1) {
      resync(state, `patch ${msg.seq} came after ${state.seq}`, msg.seq);
      return null;
    }
    state.seq = msg.seq;
  }
  const ids = msg.buffers || [];
  const bufs = toBuffers(ids, buffers || []);
  const apply = (doc) => doc.apply_json_patch(JSON.parse(msg.content), copyBuffers(bufs));
  try {
    apply(state.master);
  } catch (err) {
    if (!numbered) throw err;
    resync(state, `patch ${msg.seq} failed (${err})`, msg.seq); // the document differs
    return null;
  }
  const rerender = [];
  for (const view of state.views) {
    if (view.doc == null) continue;
    view.blocked = true;
    try {
      apply(view.doc);
    } catch (err) {
      console.error("foundation pane: a patch failed; re-rendering", err);
      rerender.push(view);
    } finally {
      view.blocked = false;
    }
  }
  return Promise.all(rerender.map((view) => show(state, view)));
}

function initialize({ model }) {
  const id = model.get("pane_id");
  const state = { model, Bokeh: null, master: null, views: new Set(), patches: 0,
                  seq: null, resyncing: false };
  PANES.set(id, state);
  // every step (BokehJS loaded, a new bundle, a patch) runs in order on this chain
  state.chain = waitForBokeh(120000).then((Bokeh) => {
    state.Bokeh = Bokeh;
    return rebuild(state);
  });
  const step = (fn) => {
    state.chain = state.chain.then(fn).catch((err) => console.error("foundation pane:", err));
  };
  model.on("change:bundle", () => step(() => rebuild(state)));
  model.on("msg:custom", (msg, buffers) => {
    if (msg && msg.type === "patch") {
      step(() => {
        state.patches += 1;
        return patch(state, msg, buffers);
      });
    }
  });
  return () => PANES.delete(id);
}

function render({ model, el }) {
  const state = PANES.get(model.get("pane_id"));
  const view = { el, doc: null, manager: null, blocked: false };
  el.classList.add("fd-bokeh");
  if (state == null) {
    el.textContent = "(this panel's model is gone: run the cell again)";
    return;
  }
  state.views.add(view);
  state.chain = state.chain.then(() => (state.views.has(view) ? show(state, view) : null))
    .catch((err) => {
      console.error("foundation pane:", err);
      el.textContent = `Bokeh view failed: ${err}`;
    });
  return () => {
    state.views.delete(view);
    if (state.Bokeh != null) hide(state, view);
  };
}

export default { initialize, render };
