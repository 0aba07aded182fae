/* The chat widget: plain JavaScript, no framework, no CDN. The gateway prepends its texts
 * (INTAKE_WEBCHAT_TEXTS) and its sites (INTAKE_WEBCHAT_SITES). Protocol: docs/webchat.md.
 *
 *   <script src="https://GATEWAY/webchat/widget.js" data-site="SITE_KEY" async></script>
 *
 * Optional attributes: data-locale (zh-CN, zh-TW, en), data-open="true", and for a logged-in
 * user the signed identity computed by the site's server: data-user-id, data-user-email,
 * data-user-name, data-user-signature.
 */
(function () {
  "use strict";
  var script = document.currentScript || document.querySelector("script[data-site]");
  if (!script || window.__intakeWebchat) { return; }
  window.__intakeWebchat = true;
  var base = script.src.replace(/\/widget\.js(\?.*)?$/, "");
  var site = script.getAttribute("data-site") || "";
  var siteInfo = INTAKE_WEBCHAT_SITES[site] || {name: "", color: "#1f6feb"};

  function pickLocale(tag) {
    tag = (tag || "").toLowerCase();
    if (/^zh-(tw|hk|mo|hant)/.test(tag) || tag === "yue") { return "zh-TW"; }
    if (/^zh/.test(tag)) { return "zh-CN"; }
    if (/^en/.test(tag)) { return "en"; }
    return null;
  }
  var locale = pickLocale(script.getAttribute("data-locale")) ||
    pickLocale(navigator.language) || INTAKE_WEBCHAT_DEFAULT_LOCALE || "en";
  var T = INTAKE_WEBCHAT_TEXTS[locale] || INTAKE_WEBCHAT_TEXTS.en;

  var store = {
    key: function (k) { return "intake-webchat:" + site + ":" + k; },
    get: function (k) {
      try { return JSON.parse(localStorage.getItem(this.key(k)) || "null"); } catch (e) { return null; }
    },
    set: function (k, v) {
      try { localStorage.setItem(this.key(k), JSON.stringify(v)); } catch (e) { /* private mode */ }
    },
    del: function (k) { try { localStorage.removeItem(this.key(k)); } catch (e) { /* ignore */ } }
  };

  // -- the DOM --------------------------------------------------------------------------------
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var k in attrs || {}) { node.setAttribute(k, attrs[k]); }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }
  var css = el("link", {rel: "stylesheet", href: base + "/widget.css"});
  document.head.appendChild(css);
  var root = el("div", {id: "intake-webchat", "class": "iwc", lang: locale});
  root.style.setProperty("--iwc-accent", siteInfo.color);
  var launcher = el("button", {type: "button", "class": "iwc-launcher", "aria-expanded": "false",
                               "aria-controls": "iwc-panel"});
  launcher.appendChild(el("span", {"aria-hidden": "true", "class": "iwc-bubble-icon"}));
  launcher.appendChild(el("span", {"class": "iwc-launcher-text"}, T.open));
  var panel = el("section", {id: "iwc-panel", "class": "iwc-panel", role: "dialog",
                             "aria-label": siteInfo.name || T.title});
  panel.hidden = true;
  var header = el("header", {"class": "iwc-header"});
  header.appendChild(el("h2", {"class": "iwc-title"}, siteInfo.name || T.title));
  var status = el("span", {"class": "iwc-status", role: "status"});
  header.appendChild(status);
  var closeBtn = el("button", {type: "button", "class": "iwc-close", "aria-label": T.close}, "×");
  header.appendChild(closeBtn);
  panel.appendChild(header);

  var log = el("ol", {"class": "iwc-log", role: "log", "aria-live": "polite",
                      "aria-label": T.title});
  log.appendChild(el("li", {"class": "iwc-entry iwc-system"}, T.welcome));
  panel.appendChild(log);

  var prechat = el("fieldset", {"class": "iwc-prechat"});
  prechat.appendChild(el("legend", {}, T.prechat));
  var fields = {};
  [["name", "text", "name"], ["email", "email", "email"], ["phone", "tel", "tel"]].forEach(function (f) {
    var id = "iwc-" + f[0];
    var label = el("label", {"for": id}, T[f[0]]);
    var input = el("input", {id: id, name: f[0], type: f[1], autocomplete: f[2],
                             maxlength: f[0] === "email" ? "254" : "100"});
    prechat.appendChild(label);
    prechat.appendChild(input);
    fields[f[0]] = input;
  });
  panel.appendChild(prechat);

  var form = el("form", {"class": "iwc-compose"});
  var textLabel = el("label", {"for": "iwc-text", "class": "iwc-hidden"}, T.placeholder);
  var text = el("textarea", {id: "iwc-text", rows: "2", maxlength: "4000",
                             placeholder: T.placeholder});
  var fileLabel = el("label", {"class": "iwc-attach", title: T.attach});
  var fileInput = el("input", {type: "file", "class": "iwc-file", "aria-label": T.attach});
  fileLabel.appendChild(fileInput);
  fileLabel.appendChild(el("span", {"aria-hidden": "true"}, "+"));
  var fileName = el("span", {"class": "iwc-file-name", "aria-live": "polite"});
  var send = el("button", {type: "submit", "class": "iwc-send"}, T.send);
  form.appendChild(textLabel);
  form.appendChild(fileLabel);
  form.appendChild(text);
  form.appendChild(send);
  form.appendChild(fileName);
  panel.appendChild(form);
  root.appendChild(launcher);
  root.appendChild(panel);
  (document.body || document.documentElement).appendChild(root);

  function setOpen(open) {
    panel.hidden = !open;
    launcher.setAttribute("aria-expanded", String(open));
    root.classList.toggle("iwc-open", open);
    if (open) { text.focus(); start(); } else { launcher.focus(); }
  }
  launcher.addEventListener("click", function () { setOpen(panel.hidden); });
  closeBtn.addEventListener("click", function () { setOpen(false); });
  panel.addEventListener("keydown", function (e) { if (e.key === "Escape") { setOpen(false); } });
  fileInput.addEventListener("change", function () {
    fileName.textContent = fileInput.files && fileInput.files[0] ? fileInput.files[0].name : "";
  });
  text.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); form.requestSubmit ? form.requestSubmit() : submit(); }
  });

  // -- rendering: one element per entry seq, one per pending client id --------------------------
  var rendered = {};   // seq -> element
  var pendingEls = {}; // client_id -> element
  var lastSeq = 0;

  function renderEntry(entry) {
    if (rendered[entry.seq]) { return; }
    var li = el("li", {"class": "iwc-entry iwc-" + entry.kind, "data-seq": String(entry.seq)});
    var who = el("span", {"class": "iwc-who"}, entry.kind === "visitor" ? T.you : T.agent);
    li.appendChild(who);
    li.appendChild(el("p", {"class": "iwc-text"}, entry.text || ""));
    (entry.attachments || []).forEach(function (name) {
      li.appendChild(el("span", {"class": "iwc-attachment"}, "📎 " + name));
    });
    if (entry.kind === "visitor" && entry.ticket_number) {
      var ack = el("div", {"class": "iwc-ack"});
      var line = el("p", {"class": "iwc-ticket-line"});
      line.appendChild(document.createTextNode(T.ticket + ": "));
      line.appendChild(el("strong", {"class": "iwc-ticket"}, entry.ticket_number));
      ack.appendChild(line);
      if (entry.due_text) { ack.appendChild(el("p", {"class": "iwc-due"}, T.due + ": " + entry.due_text)); }
      if (entry.ack) { ack.appendChild(el("p", {"class": "iwc-ack-text"}, entry.ack)); }
      li.appendChild(ack);
    }
    // In seq order, before the messages still pending (a reply may overtake one).
    var pending = entry.client_id && pendingEls[entry.client_id];
    if (pending) { log.removeChild(pending); delete pendingEls[entry.client_id]; }
    var before = null;
    for (var n = log.firstChild; n; n = n.nextSibling) {
      if (n.classList.contains("iwc-pending") ||
          (n.dataset && n.dataset.seq && Number(n.dataset.seq) > entry.seq)) { before = n; break; }
    }
    log.insertBefore(li, before);
    rendered[entry.seq] = li;
    if (entry.seq > lastSeq) { lastSeq = entry.seq; }
    if (entry.client_id) { dropPending(entry.client_id); }
    log.scrollTop = log.scrollHeight;
  }

  function renderPending(p) {
    if (pendingEls[p.client_id]) { return; }
    var li = el("li", {"class": "iwc-entry iwc-visitor iwc-pending", "data-client-id": p.client_id});
    li.appendChild(el("span", {"class": "iwc-who"}, T.you));
    li.appendChild(el("p", {"class": "iwc-text"}, p.text));
    li.appendChild(el("span", {"class": "iwc-state"}, T.sending));
    log.appendChild(li);
    pendingEls[p.client_id] = li;
    log.scrollTop = log.scrollHeight;
  }

  // -- the session ------------------------------------------------------------------------------
  var token = store.get("token");
  var pending = store.get("pending") || [];
  function savePending() { store.set("pending", pending); }
  function dropPending(cid) {
    pending = pending.filter(function (p) { return p.client_id !== cid; });
    savePending();
  }
  function newId() {
    var a = new Uint8Array(16);
    (window.crypto || window.msCrypto).getRandomValues(a);
    return Array.prototype.map.call(a, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }
  if (token) { prechat.hidden = true; }

  function api(method, path, body, headers) {
    var h = headers || {};
    if (token) { h.Authorization = "Bearer " + token; }
    if (body !== undefined && !(body instanceof Blob)) {
      h["Content-Type"] = "application/json";
      body = JSON.stringify(body);
    }
    return fetch(base + "/v1/" + path, {method: method, headers: h, body: body, mode: "cors",
                                       credentials: "omit"}).then(function (resp) {
      return resp.json().catch(function () { return {}; }).then(function (data) {
        if (resp.status === 401 && path !== "sessions") { resetSession(); }
        if (!resp.ok) { var err = new Error(data.error || String(resp.status)); err.status = resp.status; throw err; }
        return data;
      });
    });
  }

  function resetSession() {
    token = null;
    store.del("token");
    if (ws) { try { ws.close(); } catch (e) { /* ignore */ } }
  }

  var creating = null;
  function ensureSession() {
    if (token) { return Promise.resolve(token); }
    if (creating) { return creating; }
    var body = {site: site, locale: locale};
    ["name", "email", "phone"].forEach(function (k) { if (fields[k].value.trim()) { body[k] = fields[k].value.trim(); } });
    var uid = script.getAttribute("data-user-id");
    if (uid) {
      body.identity = {user_id: uid, email: script.getAttribute("data-user-email") || "",
                       signature: script.getAttribute("data-user-signature") || ""};
      if (script.getAttribute("data-user-name")) { body.identity.name = script.getAttribute("data-user-name"); }
    }
    creating = api("POST", "sessions", body).then(function (data) {
      token = data.token;
      store.set("token", token);
      prechat.hidden = true;
      creating = null;
      connect();
      return token;
    }, function (err) { creating = null; throw err; });
    return creating;
  }

  // -- live connection: WebSocket, with a long-poll fallback --------------------------------------
  var ws = null, wsReady = false, wsFailures = 0, retry = 1000, polling = false, started = false;

  function setStatus(online) {
    status.textContent = online ? T.online : T.offline;
    root.classList.toggle("iwc-offline", !online);
  }

  function start() {
    if (started) { return; }
    started = true;
    pending.forEach(renderPending);
    if (token) { connect(); }
  }

  function connect() {
    if (!token || ws) { return; }
    if (wsFailures >= 2 || !window.WebSocket) { startPolling(); }
    var url = base.replace(/^http/, "ws") + "/v1/ws?site=" + encodeURIComponent(site);
    try { ws = new WebSocket(url); } catch (e) { ws = null; wsFailures++; scheduleReconnect(); return; }
    ws.onopen = function () { ws.send(JSON.stringify({type: "auth", token: token, after: lastSeq})); };
    ws.onmessage = function (ev) {
      var frame;
      try { frame = JSON.parse(ev.data); } catch (e) { return; }
      if (frame.type === "ready") {
        wsReady = true; wsFailures = 0; retry = 1000; polling = false; setStatus(true);
        flush();
      } else if (frame.type === "entry" || frame.type === "ack") {
        renderEntry(frame.entry);
      } else if (frame.type === "error") {
        if (frame.status === 401) { resetSession(); return; }
        if (frame.client_id && frame.status >= 400 && frame.status < 500 && frame.status !== 429) {
          failPending(frame.client_id, frame.error);
        } else if (frame.client_id) {
          // 429 or 503: the same message again later, with the same client id.
          var again = pending.filter(function (p) { return p.client_id === frame.client_id; })[0];
          if (again) { setTimeout(function () { sendOne(again); }, 1000 * (frame.retry_after || 5)); }
        }
      }
    };
    ws.onclose = function (ev) {
      var wasReady = wsReady;
      ws = null; wsReady = false; setStatus(false);
      if (ev.code === 4001) { resetSession(); return; }
      if (!wasReady) { wsFailures++; }
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 30000);
    if (wsFailures >= 2) { startPolling(); }
  }

  function startPolling() {
    if (polling || !token) { return; }
    polling = true;
    flush();
    (function poll() {
      if (!polling || wsReady || !token) { polling = false; return; }
      api("GET", "messages?after=" + lastSeq + "&wait=25").then(function (data) {
        setStatus(true);
        data.entries.forEach(renderEntry);
        poll();
      }, function () { setStatus(false); setTimeout(poll, 3000); });
    })();
  }

  function failPending(cid, reason) {
    var li = pendingEls[cid];
    if (li) {
      li.classList.add("iwc-failed");
      var st = li.querySelector(".iwc-state");
      if (st) { st.textContent = reason || T.failed; }
    }
    dropPending(cid);
  }

  // Every pending message is sent again with its own client id until the gateway answers it:
  // a resend is answered with the first entry, so nothing is lost and nothing doubled.
  function flush() {
    pending.forEach(function (p) { sendOne(p); });
  }

  function sendOne(p) {
    if (wsReady && ws) {
      ws.send(JSON.stringify({type: "message", client_id: p.client_id, text: p.text,
                              attachments: p.attachments || []}));
      return;
    }
    if (!token) { return; }
    api("POST", "messages", {client_id: p.client_id, text: p.text, attachments: p.attachments || []})
      .then(function (data) { renderEntry(data.entry); }, function (err) {
        if (err.status && err.status >= 400 && err.status < 500 && err.status !== 429 && err.status !== 401) {
          failPending(p.client_id, err.message);
        } else { setTimeout(function () { if (pendingEls[p.client_id]) { sendOne(p); } }, 3000); }
      });
  }

  function submit(e) {
    if (e) { e.preventDefault(); }
    var value = text.value.trim();
    var file = fileInput.files && fileInput.files[0];
    if (!value && !file) { return; }
    var p = {client_id: newId(), text: value, attachments: []};
    text.value = "";
    renderPending(p);
    ensureSession().then(function () {
      if (!file) { return; }
      fileInput.value = ""; fileName.textContent = "";
      return api("POST", "uploads", file, {"X-Filename": encodeURIComponent(file.name),
                                           "Content-Type": file.type || "application/octet-stream"})
        .then(function (up) { p.attachments = [up.upload_id]; });
    }).then(function () {
      pending.push(p);
      savePending();
      sendOne(p);
    }, function (err) { failPending(p.client_id, err.message); });
  }
  form.addEventListener("submit", submit);

  window.addEventListener("online", function () { if (!ws) { retry = 1000; connect(); } });
  if (token) { start(); }
  if (script.getAttribute("data-open") === "true") { setOpen(true); }
})();
