// Who is signed in. The token lives in localStorage so a reload keeps the
// session; anything that cares listens for "change".

const KEY = "matchday.session";

class Session extends EventTarget {
  constructor() {
    super();
    try {
      this.user = JSON.parse(localStorage.getItem(KEY)) ?? null;
    } catch {
      this.user = null;
    }
  }

  get token() {
    return this.user?.token ?? null;
  }

  /** Signed in as `{user_id, username, token}`. */
  signIn(user) {
    this.user = { user_id: user.user_id, username: user.username, token: user.token };
    localStorage.setItem(KEY, JSON.stringify(this.user));
    this.dispatchEvent(new Event("change"));
  }

  signOut() {
    if (!this.user) return;
    this.user = null;
    localStorage.removeItem(KEY);
    this.dispatchEvent(new Event("change"));
  }

  /** The server refused the token (expired, revoked, or from another deployment). */
  expired() {
    this.signOut();
  }
}

export const session = new Session();
