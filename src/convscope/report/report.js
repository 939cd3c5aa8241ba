// convscope report: click a figure to see it full size (Esc or a click closes it); the side table of contents
// marks the section in view and folds away on narrow screens. Without JavaScript the page reads the same.
document.addEventListener("DOMContentLoaded", () => {
  const box = document.createElement("div");
  box.className = "lightbox";
  box.hidden = true;
  box.setAttribute("role", "dialog");
  box.append(document.createElement("img"));
  document.body.append(box);
  const close = () => { box.hidden = true; };
  box.addEventListener("click", close);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") close(); });
  for (const img of document.querySelectorAll("figure img")) {
    img.classList.add("zoomable");
    img.addEventListener("click", () => {
      box.firstChild.src = img.src;
      box.firstChild.alt = img.alt;
      box.hidden = false;
    });
  }
  const toc = document.getElementById("TOC");
  if (!toc) return;
  const toggle = document.createElement("button");
  toggle.className = "toc-toggle";
  toggle.textContent = "Contents";
  toggle.addEventListener("click", () => toc.classList.toggle("open"));
  toc.prepend(toggle);
  const links = new Map([...toc.querySelectorAll("a[href^='#']")].map((a) => [decodeURIComponent(a.hash.slice(1)), a]));
  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      for (const a of links.values()) a.classList.remove("active");
      links.get(entry.target.id)?.classList.add("active");
    }
  }, { rootMargin: "0px 0px -70% 0px" });
  for (const id of links.keys()) {
    const heading = document.getElementById(id);
    if (heading) observer.observe(heading);
  }
});
