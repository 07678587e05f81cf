/* The ipywidgets embed bundle typesets widget labels with the MathJax 2 API,
   MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]); the book loads MathJax 3, which has no Hub.
   Map that one call onto MathJax 3. Loaded (by myst-nb's nb_ipywidgets_js) only on pages with saved widgets,
   before the embed bundle. Installed at DOMContentLoaded, when the deferred MathJax script has run and
   before the embed bundle renders the widgets (on window load). */
(function () {
  "use strict";
  function install() {
    var mj = window.MathJax;
    if (!mj || mj.Hub || typeof mj.typesetPromise !== "function") return;
    mj.Hub = {
      Queue: function () {
        Array.prototype.forEach.call(arguments, function (job) {
          if (Array.isArray(job) && job[0] === "Typeset") {
            var el = job[2];
            var ready = mj.startup && mj.startup.promise ? mj.startup.promise : Promise.resolve();
            ready
              .then(function () { return mj.typesetPromise(el ? [el] : undefined); })
              .catch(function (err) { console.warn("MathJax typeset of a widget failed:", err); });
          }
        });
      },
    };
  }
  document.addEventListener("DOMContentLoaded", install);
  window.addEventListener("load", install);
})();
