// caretaker console: live updates without a build chain. The server sends
// an event when what this page shows has changed; the page's <main> is
// fetched again and swapped in, keeping focus, scroll and open <details>.
// A form that has been typed into is never swapped away: a notice offers
// the update instead. Without this script every page still works.
(function () {
  "use strict";
  var src = document.body.getAttribute("data-events");
  if (!src || !window.fetch || !window.DOMParser) return;

  function main() { return document.getElementById("main"); }
  function page() {
    var m = main();
    return (m && m.getAttribute("data-page")) || location.pathname + location.search;
  }
  // After a form post answered with the page itself (an error shown on
  // the form), the address is the form's: make it the page's, so a reload
  // shows the page instead of posting again.
  if (history.replaceState && page() !== location.pathname + location.search) {
    history.replaceState(null, "", page() + location.hash);
  }

  var dirty = false, busy = false, again = false;
  document.addEventListener("input", function (e) {
    var form = e.target.form;
    if (!form || form.method.toLowerCase() !== "post") return;
    dirty = true;
    // A placement answer is for the form as it was asked.
    var plan = document.getElementById("plan-result");
    if (plan && form.id === "create-cluster") plan.remove();
  });

  function say(text) {
    var live = document.getElementById("live");
    if (live) live.textContent = text;
  }

  function offer() {
    if (document.getElementById("stale")) return;
    var p = document.createElement("p");
    p.id = "stale";
    p.className = "notice";
    p.setAttribute("role", "status");
    p.appendChild(document.createTextNode("This page has changed since it was shown. "));
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = "Show the changes (discards what you typed)";
    b.addEventListener("click", function () { dirty = false; refresh(); });
    p.appendChild(b);
    var m = main();
    if (m) m.insertBefore(p, m.firstChild);
  }

  function swap(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("main");
    var old = main();
    if (!fresh || !old) return;
    var active = document.activeElement;
    var focusID = active && active.id;
    var open = [];
    old.querySelectorAll("details[open][id]").forEach(function (d) { open.push(d.id); });
    var x = window.scrollX, y = window.scrollY;
    // A message shown after a change stays until the next page.
    var flash = old.querySelector("#flash"), freshFlash = fresh.querySelector("#flash");
    if (flash && freshFlash && !freshFlash.textContent.trim()) freshFlash.replaceWith(flash);
    old.replaceWith(document.adoptNode(fresh));
    open.forEach(function (id) {
      var d = document.getElementById(id);
      if (d) d.open = true;
    });
    if (focusID) {
      var el = document.getElementById(focusID);
      if (el && el.focus) el.focus({ preventScroll: true });
    }
    window.scrollTo(x, y);
    say("Updated.");
  }

  function refresh() {
    if (busy) { again = true; return; }
    if (dirty) { offer(); return; }
    busy = true;
    fetch(page(), { headers: { "X-Console-Partial": "1" }, credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { location.reload(); return null; }
        return r.text();
      })
      .then(function (html) { if (html) swap(html); })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  // Check placement without leaving the form: post it with plan=1 and
  // show the answer as #plan-result, which exists only once there is one.
  document.addEventListener("click", function (e) {
    var b = e.target.closest && e.target.closest("#plan");
    if (!b || !b.form) return;
    e.preventDefault();
    var form = b.form;
    var data = new URLSearchParams(new FormData(form));
    data.set("plan", "1");
    say("Checking the placement…");
    function show(node) {
      var old = document.getElementById("plan-result");
      if (old) { old.replaceWith(node); return; }
      var buttons = document.getElementById("create-buttons");
      if (buttons) buttons.parentNode.insertBefore(node, buttons);
    }
    function answer(text) {
      var d = document.createElement("div");
      d.id = "plan-result";
      d.setAttribute("role", "status");
      var p = document.createElement("p");
      p.className = "error";
      p.textContent = text;
      d.appendChild(p);
      return d;
    }
    fetch(form.action, { method: "POST", body: data, credentials: "same-origin",
      headers: { "X-Console-Partial": "1" } })
      .then(function (r) {
        if (r.status === 401) { location.reload(); return null; }
        return r.text();
      })
      .then(function (html) {
        if (html == null) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("plan-result");
        if (fresh) { show(document.adoptNode(fresh)); say("The placement answered."); return; }
        var problems = doc.querySelector("#create-cluster .error, main .error");
        show(answer(problems ? problems.textContent.replace(/\s+/g, " ").trim() : "The placement gave no answer."));
      })
      .catch(function () { show(answer("The placement could not be asked; try again.")); });
  });

  if (!window.EventSource) return;
  var es = new EventSource(src + "?page=" + encodeURIComponent(page()));
  es.addEventListener("change", refresh);
  es.addEventListener("signedout", function () { es.close(); location.reload(); });
  es.onerror = function () {
    if (es.readyState === EventSource.CLOSED) location.reload();
  };
})();
