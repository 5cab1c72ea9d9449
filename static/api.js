// The REST API: JSON in and out, errors as ApiError with the server's
// {"error": ...} message, and the optional API token.
//
// When a call answers 401 the user is asked for the token once (concurrent
// 401s share one prompt); it is kept in sessionStorage and sent as
// "Authorization: Bearer <token>" on every call and on the live feed.

const TOKEN_KEY = 'scheduler.apiToken';

let token = readStoredToken();
let asking = null;
let declined = false;
let askForToken = async () => {
  const answer = window.prompt('This scheduler needs an API token:');
  return answer === null ? null : answer;
};

function readStoredToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || null;
  } catch {
    return null;
  }
}

function storeToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage may be unavailable (private mode); the token still lives in memory.
  }
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
  }
}

/** Replace the token prompt: an async function returning the token or null. */
export function setTokenPrompt(fn) {
  askForToken = fn;
}

export function currentToken() {
  return token;
}

export function authHeaders() {
  return token ? {Authorization: `Bearer ${token}`} : {};
}

/**
 * A request answered 401 while sending *used*.  Resolves true when there is
 * a (new) token to retry with, false when the user declined to give one.
 */
export async function tokenRejected(used) {
  if (token !== used) return Boolean(token); // someone else already asked
  if (declined) return false;
  if (!asking) {
    token = null;
    storeToken(null);
    asking = (async () => {
      try {
        const answer = ((await askForToken()) || '').trim();
        if (!answer) {
          declined = true;
          return false;
        }
        token = answer;
        storeToken(answer);
        return true;
      } finally {
        asking = null;
      }
    })();
  }
  return asking;
}

/** fetch() with the token; one retry after a 401 if a token was given. */
export async function request(method, path, {body, headers = {}, signal} = {}) {
  for (let attempt = 0; ; attempt++) {
    const used = token;
    const init = {
      method,
      cache: 'no-store',
      signal,
      // X-Triggered-By: jobs and task changes made here are recorded as the
      // dashboard's rather than the API's (scheduler/http_api.py, trigger_of).
      headers: {Accept: 'application/json', 'X-Triggered-By': 'dashboard', ...headers, ...authHeaders()},
    };
    // The server takes POSTs only as JSON (its CSRF defence), body or not.
    if (body !== undefined || method === 'POST') {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body ?? {});
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      if (error.name === 'AbortError') throw error;
      throw new ApiError(0, 'cannot reach the scheduler');
    }
    if (response.status === 401 && attempt === 0 && (await tokenRejected(used))) continue;
    if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
    return response;
  }
}

async function errorMessage(response) {
  if (response.status === 401) return 'an API token is needed (reload the page to enter it)';
  try {
    const data = await response.json();
    if (data && typeof data.error === 'string') return data.error;
  } catch {
    // not JSON
  }
  return `HTTP ${response.status} ${response.statusText}`.trim();
}

/** JSON result of a call, or null for an empty (204) answer. */
export async function api(method, path, body) {
  const response = await request(method, path, {body});
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path) => api('GET', path);
export const post = (path, body) => api('POST', path, body);
export const del = (path) => api('DELETE', path);

/**
 * A JSON resource with its version: {data, etag}.  Send the etag back as
 * *ifMatch* to change it only if nobody else has since (else ApiError 412).
 */
export async function getVersioned(path) {
  const response = await request('GET', path);
  return {data: await response.json(), etag: response.headers.get('ETag')};
}

/** PATCH *changes* into a resource, only if it is still at *ifMatch* (when given). */
export async function patch(path, changes, ifMatch = null) {
  const headers = ifMatch ? {'If-Match': ifMatch} : {};
  const response = await request('PATCH', path, {body: changes, headers});
  return {data: await response.json(), etag: response.headers.get('ETag')};
}

/** A query string from an object, skipping empty values. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== '') search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}

/**
 * A JSON list and how many items match in all (its X-Total-Count header;
 * null when the server does not say).
 */
export async function getCounted(path) {
  const response = await request('GET', path);
  const header = response.headers.get('X-Total-Count');
  return {data: await response.json(), total: header !== null && /^\d+$/.test(header) ? Number(header) : null};
}
