// Applies the saved colour theme before the first paint (a classic script in <head>: no flash of the wrong theme).
// "auto" follows prefers-color-scheme; "light" and "dark" are explicit choices (see app.js for the toggle).
(function () {
  var t = null;
  try { t = window.localStorage.getItem("opsmedic-theme"); } catch (e) { t = null; }
  if (t === "light" || t === "dark") { document.documentElement.setAttribute("data-theme", t); }
})();
