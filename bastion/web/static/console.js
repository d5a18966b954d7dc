// Small progressive enhancements; every page works without them.
"use strict";
document.querySelectorAll("form[data-confirm]").forEach((form) => {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
});
document.querySelectorAll("a[data-back]").forEach((a) => {
  a.addEventListener("click", (event) => { event.preventDefault(); history.back(); });
});
