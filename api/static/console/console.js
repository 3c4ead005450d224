// The order page, live: follow the order's event stream and, at each new revision, swap in
// its timeline as the server draws it (GET <order>/timeline). No reload, no inline script
// (the Content-Security-Policy allows only this file). Other pages have no #timeline.
"use strict";

(function () {
  const NOTIFICATION_CHECKS = 10; // after the end: ask again until the notifications settle

  function current() {
    return document.getElementById("timeline");
  }

  function setLive(text, on) {
    const badge = document.getElementById("live");
    if (badge) {
      badge.textContent = text;
      badge.classList.toggle("on", on);
    }
  }

  // Fetch the timeline and put it in place, unless an answer for a newer revision already is.
  async function refresh() {
    const shown = current();
    const answer = await fetch(shown.dataset.src, { credentials: "same-origin", cache: "no-store" });
    if (!answer.ok) {
      throw new Error("timeline: HTTP " + answer.status);
    }
    const drawn = new DOMParser().parseFromString(await answer.text(), "text/html");
    const fresh = drawn.getElementById("timeline");
    const now = current();
    if (fresh && Number(fresh.dataset.revision) >= Number(now.dataset.revision)) {
      now.replaceWith(document.importNode(fresh, true));
    }
    return current();
  }

  // One refresh at a time, in the order the events came.
  let queue = Promise.resolve();
  function enqueue(then) {
    queue = queue.then(refresh).then(then, (error) => console.warn(error));
    return queue;
  }

  // After the last revision the notifications are still on their way: a few more looks.
  function awaitNotifications(left, delay) {
    if (left <= 0 || current().dataset.settled === "true") {
      return;
    }
    window.setTimeout(() => enqueue(() => awaitNotifications(left - 1, delay * 1.5)), delay);
  }

  function follow(section) {
    const events = new EventSource(section.dataset.events);
    setLive("following live", true);
    events.addEventListener("order", () => {
      enqueue((shown) => {
        if (shown.dataset.terminal === "true") {
          events.close();
          setLive("finished", false);
          awaitNotifications(NOTIFICATION_CHECKS, 500);
        }
      });
    });
    events.addEventListener("error", () => {
      if (events.readyState === EventSource.CLOSED) {
        setLive("not following (reload to try again)", false);
      } else {
        setLive("reconnecting…", false);
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const section = current();
    if (!section) {
      return;
    }
    if (section.dataset.terminal === "true") {
      setLive("finished", false);
      awaitNotifications(NOTIFICATION_CHECKS, 500);
    } else {
      follow(section);
    }
  });
})();
