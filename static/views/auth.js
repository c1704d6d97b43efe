// Sign up and sign in. The token goes into the session; the socket then
// reconnects with it and the user channel starts.

import { h, replace } from "../lib/dom.js";
import { post, describeError } from "../lib/api.js";
import { session } from "../lib/session.js";
import { navigate } from "../app.js";

/** A short "sign in to …" panel for screens that need an account. */
export function signInPrompt(purpose) {
  const next = encodeURIComponent(location.pathname);
  return h("p", { class: "panel" },
    h("a", { href: `/login?next=${next}`, "data-link": true }, "Sign in"), " or ",
    h("a", { href: `/signup?next=${next}`, "data-link": true }, "create an account"), ` to ${purpose}.`);
}

export function mount(main, params, mode) {
  const signup = mode === "signup";
  document.title = `${signup ? "Create account" : "Sign in"} · Matchday`;
  const username = h("input", {
    type: "text", id: "username", name: "username", autocomplete: "username", required: true,
    minlength: 3, maxlength: 32, pattern: "[A-Za-z0-9_]{3,32}", autocapitalize: "none", spellcheck: "false",
    "aria-describedby": signup ? "username-hint" : false,
  });
  const password = h("input", {
    type: "password", id: "password", name: "password", required: true, minlength: 8, maxlength: 128,
    autocomplete: signup ? "new-password" : "current-password", "aria-describedby": signup ? "password-hint" : false,
  });
  const message = h("p", { class: "message", role: "alert", id: "auth-message" });
  const submit = h("button", { type: "submit", class: "button primary" }, signup ? "Create account" : "Sign in");
  const next = new URLSearchParams(location.search).get("next");
  const target = next && next.startsWith("/") && !next.startsWith("//") ? next : "/";
  const other = signup
    ? h("p", {}, "Have an account? ", h("a", { href: `/login${location.search}`, "data-link": true }, "Sign in"))
    : h("p", {}, "New here? ", h("a", { href: `/signup${location.search}`, "data-link": true }, "Create an account"), " — you start with $10,000 of virtual cash.");
  const form = h("form", { class: "form panel", novalidate: true },
    h("div", { class: "field" }, h("label", { for: "username" }, "Username"), username,
      signup && h("span", { class: "muted", id: "username-hint" }, "3–32 letters, digits or _")),
    h("div", { class: "field" }, h("label", { for: "password" }, "Password"), password,
      signup && h("span", { class: "muted", id: "password-hint" }, "At least 8 characters")),
    message, submit);
  replace(main, h("h1", {}, signup ? "Create your account" : "Sign in"), form, other);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = username.value.trim();
    if (!/^[A-Za-z0-9_]{3,32}$/.test(name)) {
      message.className = "message error";
      message.textContent = "Usernames are 3–32 letters, digits or _.";
      username.focus();
      return;
    }
    if (password.value.length < 8 || password.value.length > 128) {
      message.className = "message error";
      message.textContent = "Passwords are 8–128 characters.";
      password.focus();
      return;
    }
    submit.disabled = true;
    message.className = "message";
    message.textContent = "";
    try {
      const user = await post(signup ? "/auth/register" : "/auth/login",
        { username: name, password: password.value }, { auth: false });
      session.signIn(user);
      navigate(target, { replace: true });
    } catch (error) {
      message.className = "message error";
      message.textContent = describeError(error);
    } finally {
      submit.disabled = false;
    }
  });
  username.focus();
  return () => {};
}
