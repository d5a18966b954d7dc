// The asciinema player for a replay (data-cast) or a live session (data-live).
"use strict";
(function () {
  const el = document.getElementById("player");
  if (!el || !window.AsciinemaPlayer) return;
  const base = { fit: "width", terminalFontSize: "small" };
  if (el.dataset.live) {
    window.bastionPlayer = AsciinemaPlayer.create(
      { driver: "eventsource", url: el.dataset.live, bufferTime: 0 }, el,
      Object.assign({ autoPlay: true }, base));
    return;
  }
  const speed = document.getElementById("speed");
  const idle = document.getElementById("idle");
  const seek = document.getElementById("seek");
  let player = null;

  function seconds(text) {
    const t = String(text).trim();
    if (/^\d+(\.\d+)?$/.test(t)) return parseFloat(t);
    let total = 0, m;
    const re = /(\d+(?:\.\d+)?)(h|m|s)/g;
    while ((m = re.exec(t)) !== null) total += parseFloat(m[1]) * { h: 3600, m: 60, s: 1 }[m[2]];
    return total;
  }
  function create(startAt) {
    if (player) player.dispose();
    el.innerHTML = "";
    // The poster shows the screen at the start point before playing (not a blank one).
    const opts = Object.assign({
      preload: true, startAt: startAt, poster: "npt:" + startAt, speed: parseFloat(speed.value),
    }, base);
    if (idle.value) opts.idleTimeLimit = parseFloat(idle.value);
    player = AsciinemaPlayer.create(el.dataset.cast, el, opts);
    window.bastionPlayer = player;
  }
  function now() { return player ? player.getCurrentTime() || 0 : 0; }
  create(parseFloat(el.dataset.start || "0"));
  speed.addEventListener("change", () => create(now()));
  idle.addEventListener("change", () => create(now()));
  seek.addEventListener("change", () => { player.seek(seconds(seek.value)); });
  document.querySelectorAll("a[data-seek]").forEach((a) => {
    a.addEventListener("click", (event) => {
      event.preventDefault();
      player.seek(parseFloat(a.dataset.seek));
      el.scrollIntoView({ behavior: "smooth" });
    });
  });
})();
