// comet.js: a browser client for caddy-comet, with no dependencies.
//
//   <script src="/client/comet.js"></script>      -> window.Comet
//   import { subscribe, publish } from '/client/comet.mjs';
//
//   const sub = Comet.subscribe('/events/news', {
//     onEvent(e) { ... e.id, e.cursor, e.type, e.data (text) ... },
//     onGap(missed) { ... missed: a count, or 'unknown' ... },
//     transport: 'auto',        // 'websocket' (falling back to SSE, then long poll), 'sse'
//                               // (EventSource), 'longpoll', or auto: SSE where available
//     lastEventId: savedCursor, // resume from a cursor kept from an earlier page
//     types: ['price'],         // SSE event types to receive besides the default 'message'
//     token: () => fetch('/my-token').then((r) => r.text()),  // on routes with auth
//   });
//   sub.cursor;  sub.close();
//   await Comet.publish('/events/news', 'hello', { type: 'greeting', token: myToken });
//
//   // Several contexts on one connection, on a route with multiplex room:
//   // the URLs differ in that parameter only.
//   Comet.subscribe(['/together?room=lobby', '/together?room=news'], {
//     onEvent(e) { ... e.context ... },  onGap(missed, context) { ... },
//   });
//
// token, on a route with auth, is a token (a string) or a function that
// returns one, or a promise of one; the client asks it for a token before
// every connection, so a function can hand out a fresh one when the last
// expired. Long polls send it in Authorization; EventSource, which cannot
// set headers, gets it in the cometAuthorization cookie (tokenCookie),
// set for the subscription's path only. A stream the server ends because
// its token expired, or a poll refused with 401, connects again at once
// with a fresh token, from its cursor: nothing is missed.
//
// The client keeps the cursor of the last event, so that a reconnection,
// whatever its cause, resumes exactly after it; the server says when events
// were lost (onGap) instead of skipping them silently. Reconnections wait
// with exponential backoff and full jitter, so that the clients of a server
// that restarts do not all come back at once.
(function (global) {
  'use strict';

  const MIN_DELAY = 500;
  const MAX_DELAY = 30000;

  // A delay drawn from [0, ceiling): "full jitter".
  function jitter(ceiling) {
    return Math.random() * ceiling;
  }

  function idOf(cursor) {
    const i = cursor ? cursor.lastIndexOf(':') : -1;
    return i < 0 ? 0 : Number(cursor.slice(i + 1));
  }

  // multiplexed merges the URLs of several contexts into the one URL that
  // names them all: they must differ in one query parameter only, which
  // the URL then repeats, in their order.
  function multiplexed(urls) {
    const base = global.location ? global.location.href : undefined;
    const parsed = urls.map((u) => new URL(u, base));
    const first = parsed[0];
    let param = null;
    for (const u of parsed) {
      if (u.origin !== first.origin || u.pathname !== first.pathname) {
        throw new Error('comet: the contexts of one subscription must share a path');
      }
      for (const key of new Set([...first.searchParams.keys(), ...u.searchParams.keys()])) {
        if (u.searchParams.get(key) === first.searchParams.get(key)) continue;
        if (param !== null && param !== key) {
          throw new Error('comet: the contexts of one subscription must differ in one query parameter');
        }
        param = key;
      }
    }
    if (param === null) throw new Error('comet: the contexts of one subscription must differ');
    const merged = new URL(first);
    merged.searchParams.delete(param);
    for (const u of parsed) merged.searchParams.append(param, u.searchParams.get(param) || '');
    return merged.pathname + merged.search;
  }

  function subscribe(target, options) {
    const opts = options || {};
    const onEvent = opts.onEvent || function () {};
    const onGap = opts.onGap || function () {};
    const onDeleted = opts.onDeleted || function () {};
    // Several contexts: events and gaps say which (the server names it),
    // and the cursor covers them all.
    const urls = Array.isArray(target) ? target : [target];
    const multi = urls.length > 1;
    const url = multi ? multiplexed(urls) : urls[0];
    // The transports to use, best first: a WebSocket that cannot be opened
    // (a proxy that does not pass upgrades, a route without websocket)
    // gives way to the next one, for good.
    const hasSSE = typeof EventSource === 'function';
    let transports;
    switch (opts.transport || 'auto') {
      case 'websocket':
        transports = [];
        if (typeof WebSocket === 'function') transports.push('websocket');
        if (hasSSE) transports.push('sse');
        transports.push('longpoll');
        break;
      case 'sse': transports = ['sse']; break;
      case 'longpoll': transports = ['longpoll']; break;
      default: transports = [hasSSE ? 'sse' : 'longpoll'];
    }

    const state = { cursor: opts.lastEventId || null, closed: false, failures: 0, timer: null, stop: null, token: null };

    function deliver(cursor, type, data, context) {
      state.cursor = cursor;
      state.failures = 0;
      const e = { id: idOf(cursor), cursor: cursor, type: type || 'message', data: data };
      if (multi) {
        e.context = context.context;
        e.id = context.id;
      }
      onEvent(e);
    }

    function gap(missed, context) {
      onGap(missed === 'unknown' ? 'unknown' : Number(missed), context);
    }


    // retry schedules the next connection after a failure, honouring the
    // server's Retry-After (in seconds) as a floor.
    function retry(retryAfterSeconds) {
      if (state.closed) return;
      state.failures++;
      const ceiling = Math.min(MAX_DELAY, MIN_DELAY * 2 ** state.failures);
      const floor = (retryAfterSeconds || 0) * 1000;
      state.timer = setTimeout(connect, floor + jitter(ceiling));
    }

    function withCursor(target) {
      if (!state.cursor) return target;
      const u = new URL(target, global.location ? global.location.href : undefined);
      u.searchParams.set('last_event_id', state.cursor);
      return u.toString();
    }

    // fetchToken asks the page for the token of the next connection.
    async function fetchToken() {
      if (opts.token === undefined || opts.token === null) return null;
      return typeof opts.token === 'function' ? await opts.token() : opts.token;
    }

    // tokenCookie gives EventSource the token: a cookie for the
    // subscription's path only, which the browser sends with it.
    function setTokenCookie(token) {
      if (token === null || typeof document === 'undefined') return;
      const u = new URL(url, global.location.href);
      const secure = u.protocol === 'https:' ? '; Secure' : '';
      document.cookie = `${opts.tokenCookie || 'cometAuthorization'}=${encodeURIComponent(token)}; Path=${u.pathname}; SameSite=Strict${secure}`;
    }

    function authHeaders(headers) {
      if (state.token !== null) headers.Authorization = 'Bearer ' + state.token;
      return headers;
    }

    function connectSSE() {
      // EventSource cannot set headers: the cursor goes in the query, the
      // token in a cookie. Its own reconnection is turned off by closing it
      // on any error, so that every reconnection goes through retry() and
      // its jitter.
      setTokenCookie(state.token);
      const es = new EventSource(withCursor(url));
      state.stop = () => es.close();
      // A stream of several contexts carries each event's NDJSON line,
      // which names its context, as the data.
      const onMessage = multi
        ? (e) => { const line = JSON.parse(e.data); deliver(e.lastEventId, e.type, line.data !== undefined ? line.data : atob(line.data_base64 || ''), line); }
        : (e) => deliver(e.lastEventId, e.type, e.data);
      es.onmessage = onMessage;
      (opts.types || []).forEach((type) => es.addEventListener(type, onMessage));
      es.addEventListener('comet-missed', (e) => {
        if (e.lastEventId) state.cursor = e.lastEventId;
        if (multi) { const n = JSON.parse(e.data); gap(n.missed, n.context); } else gap(e.data);
      });
      es.addEventListener('comet-reconnect', (e) => {
        es.close();
        state.failures = 0;
        // The token expired: come back at once with a fresh one.
        if (e.data === 'unauthorized') { connect(); return; }
        // The server ends streams on its own at expiration (come back now)
        // and on shutdown (come back later, not all at once).
        retry(0);
      });
      es.addEventListener('comet-deleted', (e) => {
        es.close();
        state.closed = true;
        onDeleted(multi ? JSON.parse(e.data).context : undefined);
      });
      let opened = false;
      es.onopen = () => { opened = true; state.failures = 0; };
      es.onerror = () => {
        es.close();
        if (!opened && transports.length > 1) {
          transports.shift(); // a fallback that cannot be opened either
          connect();
          return;
        }
        retry(0);
      };
    }

    // connectWS subscribes over a WebSocket: one JSON message per event
    // or notice, as the NDJSON stream's lines. Like EventSource, it cannot
    // set headers: the cursor goes in the query, the token in a cookie.
    function connectWS() {
      setTokenCookie(state.token);
      const u = new URL(withCursor(url), global.location ? global.location.href : undefined);
      u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
      const sock = new WebSocket(u.toString());
      let opened = false;
      let next = () => retry(0); // what to do once the socket is closed
      // Of several contexts: each's cursor, in the order the open message
      // names them; the subscription's cursor is them all.
      let contexts = [];
      let cursors = [];
      const moveTo = (line) => {
        if (!multi) { state.cursor = line.cursor; return; }
        const i = contexts.indexOf(line.context);
        if (i >= 0) cursors[i] = line.cursor;
        state.cursor = cursors.join(',');
      };
      state.stop = () => sock.close();
      sock.onopen = () => { opened = true; state.failures = 0; };
      sock.onmessage = (m) => {
        const line = JSON.parse(m.data);
        switch (line.control) {
          case undefined: {
            const data = line.data !== undefined ? line.data : atob(line.data_base64 || '');
            moveTo(line);
            deliver(state.cursor, line.type, data, line);
            break;
          }
          case 'open':
            // Where the socket starts: resuming from it misses nothing.
            state.cursor = line.cursor;
            contexts = line.contexts || [];
            cursors = line.cursor.split(',');
            break;
          case 'missed':
            if (line.cursor) moveTo(line);
            gap(line.missed, line.context);
            break;
          case 'reconnect':
            state.cursor = line.cursor; // of them all, with several
            state.failures = 0;
            // The token expired: come back at once with a fresh one.
            if (line.reason === 'unauthorized') next = connect;
            break;
          case 'deleted':
            state.closed = true;
            onDeleted(line.context);
            break;
        }
      };
      sock.onclose = () => {
        if (state.closed) return;
        if (!opened) {
          // The upgrade failed: the next transport, at once.
          transports.shift();
          connect();
          return;
        }
        next();
      };
    }

    async function connectLongPoll() {
      const controller = new AbortController();
      state.stop = () => controller.abort();
      try {
        for (;;) {
          // Without a cursor, HEAD answers at once with the current one, so
          // that nothing published from now on is missed.
          const res = state.cursor === null
            ? await fetch(url, { method: 'HEAD', headers: authHeaders({}), cache: 'no-store', signal: controller.signal })
            : await fetch(url, { headers: authHeaders({ 'Last-Event-ID': state.cursor }), cache: 'no-store', signal: controller.signal });
          if (state.closed) return;
          const missed = res.headers.get('Comet-Missed');
          // A poll of several contexts says which one it answers about.
          const context = res.headers.get('Comet-Context') || undefined;
          const told = () => { if (missed) gap(missed, context); };
          if (res.status === 200) {
            told();
            deliver(res.headers.get('Comet-Cursor'), res.headers.get('Comet-Event-Type'), await res.text(),
              { context: context, id: Number(res.headers.get('Comet-Event-Id')) });
          } else if (res.status === 204) {
            state.cursor = res.headers.get('Comet-Cursor');
            state.failures = 0;
            told();
          } else if (res.status === 410) {
            state.closed = true;
            onDeleted(context);
            return;
          } else if (res.status === 401 && opts.token !== undefined && state.failures === 0) {
            // The token expired while the poll waited: a fresh one, once;
            // a second refusal in a row waits like any failure.
            state.failures++;
            state.token = await fetchToken();
          } else if (res.status === 400 && state.cursor !== null) {
            // The server cannot read our cursor: start again from now.
            state.cursor = null;
            onGap('unknown');
          } else {
            retry(Number(res.headers.get('Retry-After')) || 0);
            return;
          }
        }
      } catch (err) {
        if (!state.closed) retry(0); // the network failed, or the server went away
      }
    }

    async function connect() {
      if (state.closed) return;
      try {
        state.token = await fetchToken();
      } catch (err) {
        retry(0); // the page could not get a token now
        return;
      }
      if (state.closed) return;
      switch (transports[0]) {
        case 'websocket': connectWS(); break;
        case 'sse': connectSSE(); break;
        default: connectLongPoll();
      }
    }

    connect();
    return {
      get cursor() { return state.cursor; },
      // The transport in use: 'websocket', 'sse' or 'longpoll'.
      get transport() { return transports[0]; },
      close() {
        state.closed = true;
        clearTimeout(state.timer);
        if (state.stop) state.stop();
      },
    };
  }

  // publish POSTs data (a string, or anything else as JSON) and resolves
  // with the receipt: { id, cursor, woken }. With idempotencyKey, sending
  // the same publish again (after a network error, say) publishes it once:
  // the retry resolves with the first receipt.
  async function publish(url, data, options) {
    const opts = options || {};
    const headers = {};
    let body = data;
    if (typeof data !== 'string') {
      body = JSON.stringify(data);
      headers['Content-Type'] = 'application/json';
    } else {
      headers['Content-Type'] = opts.contentType || 'text/plain;charset=utf-8';
    }
    if (opts.type) headers['Comet-Event-Type'] = opts.type;
    if (opts.idempotencyKey) headers['Idempotency-Key'] = opts.idempotencyKey;
    if (opts.token) {
      const token = typeof opts.token === 'function' ? await opts.token() : opts.token;
      headers.Authorization = 'Bearer ' + token;
    }
    const res = await fetch(url, { method: 'POST', headers: headers, body: body });
    if (!res.ok) throw new Error(`publish to ${url}: ${res.status} ${await res.text()}`);
    return res.json();
  }

  global.Comet = { subscribe: subscribe, publish: publish };
})(globalThis);
