// The REST client: the bearer token lives in sessionStorage (gone when the tab closes, never
// in a URL or a cookie) and goes in the Authorization header of every call.

const TOKEN_KEY = "watchfloor.session";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export class Api {
  constructor({ onUnauthenticated }) {
    this.onUnauthenticated = onUnauthenticated;
    const saved = sessionStorage.getItem(TOKEN_KEY);
    this.session = saved ? JSON.parse(saved) : null;
  }

  get token() {
    return this.session ? this.session.access_token : null;
  }

  async signIn(username, password) {
    const response = await fetch("/api/v1/auth/token", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ username, password }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const message = response.status === 401 ? "Wrong user name or password." : errorMessage(body, response);
      throw new ApiError(response.status, body.error ? body.error.code : "error", message);
    }
    this.session = { ...body, username, expires_at: Date.now() + body.expires_in * 1000 };
    sessionStorage.setItem(TOKEN_KEY, JSON.stringify(this.session));
    return this.session;
  }

  // Ends every token of this user at the API (on every process, within seconds). Best effort:
  // an expired or already revoked token answers 401, which is the same end.
  async revoke() {
    if (!this.token) return;
    await fetch("/api/v1/auth/sign-out", { method: "POST", headers: { Authorization: `Bearer ${this.token}` } })
      .catch(() => null);
  }

  signOut() {
    this.session = null;
    sessionStorage.removeItem(TOKEN_KEY);
  }

  valid() {
    return this.session !== null && this.session.expires_at > Date.now() + 5000;
  }

  async request(method, path, { body, query, headers = {}, raw = false } = {}) {
    const url = new URL(path, location.origin);
    for (const [k, v] of Object.entries(query || {})) {
      if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, v);
    }
    const init = { method, headers: { Authorization: `Bearer ${this.token}`, ...headers } };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(url, init);
    if (response.status === 401) {
      this.onUnauthenticated("Your session has ended: sign in again.");
      throw new ApiError(401, "not_authenticated", "signed out");
    }
    if (!response.ok) {
      const payload = await response.json().catch(() => ({}));
      throw new ApiError(response.status, payload.error ? payload.error.code : "error", errorMessage(payload, response));
    }
    if (raw) return response;
    return response.status === 204 ? null : response.json();
  }

  get(path, query) {
    return this.request("GET", path, { query });
  }

  post(path, body) {
    return this.request("POST", path, { body });
  }

  put(path, body) {
    return this.request("PUT", path, { body });
  }
}

function errorMessage(body, response) {
  return body && body.error ? body.error.message : `${response.status} ${response.statusText}`;
}
