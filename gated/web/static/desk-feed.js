// The live check-in feed: each gate event from /desk/feed/events becomes a row at the top of
// the list. Everything a member or a gate could have typed goes in as text (textContent), never
// as HTML. Served by gated itself; no other script is loaded.
"use strict";
(function () {
  const list = document.getElementById("feed");
  const state = document.getElementById("feed-state");
  if (!list || !window.EventSource) return;
  const seen = new Set(Array.from(list.querySelectorAll("li[data-event]"), (li) => li.dataset.event));
  const MAX_ROWS = 200;

  function line(cls, text) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    return span;
  }

  function row(item) {
    const li = document.createElement("li");
    li.dataset.event = item.event_id || "";
    li.className = item.refused ? "refused" : "entered";
    li.appendChild(line("at", (item.at || "").slice(11, 19)));
    li.appendChild(line("gate", (item.site || "") + " / " + (item.gate || "")));
    if (item.photo && item.member_id) {
      // The photo beside the name, so the desk sees at a glance who is at the gate.
      const img = document.createElement("img");
      img.className = "face";
      img.alt = "";
      img.width = 48;
      img.height = 48;
      img.src = "/desk/members/" + encodeURIComponent(item.member_id) + "/photo";
      li.appendChild(img);
    }
    const who = item.name || item.member_id || "unknown card";
    if (item.member_id) {
      const a = document.createElement("a");
      a.href = "/desk/members/" + encodeURIComponent(item.member_id);
      a.textContent = who;
      a.className = "who";
      li.appendChild(a);
    } else {
      li.appendChild(line("who", who));
    }
    if (item.status) li.appendChild(line("status", item.status.replace(/_/g, " ")));
    li.appendChild(line("words", item.words || ""));
    if (item.todo) li.appendChild(line("todo", item.todo));
    if (item.operator) li.appendChild(line("operator", "by " + item.operator));
    return li;
  }

  const source = new EventSource("/desk/feed/events");
  source.addEventListener("open", () => { if (state) state.textContent = "Live"; });
  source.addEventListener("error", () => { if (state) state.textContent = "Reconnecting…"; });
  source.addEventListener("gate", (message) => {
    let item;
    try { item = JSON.parse(message.data); } catch (e) { return; }
    if (seen.has(item.event_id)) return;
    seen.add(item.event_id);
    list.insertBefore(row(item), list.firstChild);
    while (list.children.length > MAX_ROWS) list.removeChild(list.lastChild);
  });
})();
