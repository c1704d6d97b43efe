// Small DOM helpers: build elements without innerHTML, so nothing a server or
// a user sends is ever parsed as markup.

/** Creates an element: h("a", {href: "/", class: "x"}, "text", child). */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      element.className = value;
    } else if (value === true) {
      element.setAttribute(name, "");
    } else {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces every child of `element`. */
export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
}

/** Sets text only when it changed, so unchanged numbers cause no layout work. */
export function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

/** Restarts a CSS animation class (a price flash). */
export function flash(element, className) {
  element.classList.remove("flash-up", "flash-down");
  // Reading layout between remove and add restarts the animation.
  void element.offsetWidth;
  element.classList.add(className);
}

/** Shows a short message in the corner for a few seconds. */
export function toast(text) {
  const container = document.getElementById("toasts");
  if (!container) return;
  const item = h("div", { class: "toast" }, text);
  container.append(item);
  setTimeout(() => item.remove(), 5000);
}
