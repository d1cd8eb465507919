// The console's few behaviours: live refresh from server-sent events, submit, cancel, sign in/out.
// User text only ever reaches the page as text (textContent) or inside HTML that the server
// rendered with Jinja2's autoescape; DOMParser builds that HTML inert (no script runs).
"use strict";
(function () {
  const body = document.body;
  const JSON_HEADERS = { "Content-Type": "application/json", "X-Orchestrator-Console": "1" };

  async function problemText(response) {
    try {
      const doc = await response.json();
      return doc.detail || doc.title || response.statusText;
    } catch (e) {
      return response.status + " " + response.statusText;
    }
  }

  // ---- live parts --------------------------------------------------------------------------
  let refreshing = false;
  let again = false;

  async function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      const url = new URL(window.location.href);
      url.searchParams.set("part", "live");
      const response = await fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (response.ok) {
        const doc = new DOMParser().parseFromString(await response.text(), "text/html");
        const target = document.getElementById("live");
        if (target) {
          const kept = keepInputs(target);
          const forms = keepForms(target, doc.body);
          target.replaceChildren(...doc.body.childNodes);
          forms.forEach(([fresh, old]) => fresh.replaceWith(old));
          restoreInputs(target, kept);
        }
      }
    } finally {
      refreshing = false;
      if (again) { again = false; refresh(); }
    }
  }

  // What someone is typing in a live part (a cancel reason) survives a refresh.
  function keepInputs(root) {
    const kept = {};
    root.querySelectorAll("input[name]").forEach((el) => { kept[el.name] = el.value; });
    return kept;
  }
  // A cancel form still offered stays the same element: what is being typed into it, its focus,
  // and a click on its way to it are not lost to a refresh that lands meanwhile.
  function keepForms(root, incoming) {
    const pairs = [];
    incoming.querySelectorAll("form[data-cancel]").forEach((fresh) => {
      const old = root.querySelector('form[data-cancel="' + CSS.escape(fresh.dataset.cancel) + '"]');
      if (old) pairs.push([fresh, old]);
    });
    return pairs;
  }
  function restoreInputs(root, kept) {
    root.querySelectorAll("input[name]").forEach((el) => { if (el.name in kept) el.value = kept[el.name]; });
  }

  function follow() {
    const mode = body.dataset.live;
    if (!mode || !window.EventSource) return;
    const status = document.getElementById("live-status");
    const show = (state, text) => { if (status) { status.dataset.state = state; status.textContent = text; } };
    const source = new EventSource("/api/v1/events");
    source.addEventListener("open", () => show("live", "live"));
    source.addEventListener("error", () => show("lost", "reconnecting…"));
    source.addEventListener("change", (event) => {
      const change = JSON.parse(event.data);
      const mine = body.dataset.command;
      if (mode === "command" && mine && !change.many && !change.commands.includes(mine)) return;
      refresh();
    });
  }

  // ---- cancel (a form inside the command page's live part) ----------------------------------
  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.dataset.cancel) return;
    event.preventDefault();
    const result = form.querySelector(".result");
    const button = form.querySelector("button");
    button.disabled = true;
    const reason = form.elements.namedItem("reason").value || "cancelled from the console";
    const response = await fetch("/api/v1/commands/" + encodeURIComponent(form.dataset.cancel) + "/cancel", {
      method: "POST", credentials: "same-origin", headers: JSON_HEADERS, body: JSON.stringify({ reason: reason }),
    });
    if (response.ok) {
      result.textContent = "cancel requested";
      result.className = "result ok";
      refresh();
    } else {
      result.textContent = await problemText(response);
      result.className = "result bad";
      button.disabled = false;
    }
  });

  // ---- submit --------------------------------------------------------------------------------
  function submitForm() {
    const form = document.getElementById("submit-form");
    if (!form) return;
    const select = document.getElementById("flow-select");
    const sets = form.querySelectorAll("fieldset[data-flow]");
    const choose = () => sets.forEach((set) => {
      const on = set.dataset.flow === select.value;
      set.hidden = !on;
      set.disabled = !on;
    });
    select.addEventListener("change", choose);
    choose();
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const result = document.getElementById("submit-result");
      const set = form.querySelector('fieldset[data-flow="' + CSS.escape(select.value) + '"]');
      const params = {};
      set.querySelectorAll("input[data-param]").forEach((el) => {
        if (el.value.trim() !== "") params[el.dataset.param] = el.value.trim();
      });
      const request = { flow: select.value, params: params };
      const id = document.getElementById("command-id").value.trim();
      if (id) request.command_id = id;
      const response = await fetch("/api/v1/commands", {
        method: "POST", credentials: "same-origin", headers: JSON_HEADERS, body: JSON.stringify(request),
      });
      result.replaceChildren();
      if (response.ok) {
        const accepted = await response.json();
        const link = document.createElement("a");
        link.href = "/commands/" + encodeURIComponent(accepted.command_id);
        link.textContent = accepted.command_id;
        link.dataset.testid = "submitted-link";
        result.append(accepted.duplicate ? "already accepted: " : "accepted: ", link, " — " + accepted.summary);
        result.className = "result ok";
      } else {
        result.textContent = await problemText(response);
        result.className = "result bad";
      }
    });
  }

  // ---- signing in and out --------------------------------------------------------------------
  function loginForm() {
    const form = document.getElementById("login-form");
    if (!form) return;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const token = form.elements.namedItem("token").value;
      const response = await fetch("/console/session", {
        method: "POST", credentials: "same-origin", headers: JSON_HEADERS, body: JSON.stringify({ token: token }),
      });
      if (response.ok) {
        window.location.assign(form.dataset.next || "/");
      } else {
        const result = document.getElementById("login-result");
        result.textContent = await problemText(response);
        result.className = "result bad";
      }
    });
  }

  function signOut() {
    const button = document.getElementById("sign-out");
    if (!button) return;
    button.addEventListener("click", async () => {
      await fetch("/console/session", { method: "DELETE", credentials: "same-origin", headers: JSON_HEADERS });
      window.location.assign("/login");
    });
  }

  follow();
  submitForm();
  loginForm();
  signOut();
})();
