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

/**
 * A number that flashes green (up) or red (down) when it changes. The flash
 * is a layer under the text whose opacity a CSS animation fades; switching
 * between two identical animations (`a`/`b`) restarts it with a class change
 * alone. No forced layout, nothing for the main thread to repaint each
 * frame: animating the background colour instead cost a phone-sized board
 * of ticking prices several hundred milliseconds of main thread a second.
 */
export function flashingNumber(attributes = {}) {
  const layer = h("span", { class: "flash-layer", "aria-hidden": "true" });
  const value = h("span", { class: "flash-value" });
  const element = h("span", { ...attributes, class: `${attributes.class ?? ""} flashing`.trim() }, layer, value);
  let parity = false;
  return {
    element,
    value,
    set(text) {
      setText(value, text);
    },
    flash(direction) {
      parity = !parity;
      layer.className = `flash-layer ${direction} ${parity ? "a" : "b"}`;
    },
  };
}
