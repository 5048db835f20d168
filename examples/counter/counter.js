// The seed's count-clicker on comet.js: the counter is the event id of the
// long_polling context, so every click (a publish) adds one. The page
// long-polls, as in the seed, and keeps its cursor, so clicks made while it
// was reconnecting are not lost.
'use strict';

const url = 'long_polling';
const countEl = document.getElementById('count');
const statusEl = document.getElementById('status');

function show(count) {
  countEl.textContent = count;
  statusEl.textContent = '';
}

function idOf(cursor) {
  return Number(cursor.slice(cursor.lastIndexOf(':') + 1));
}

async function start() {
  let cursor = null;
  while (cursor === null) {
    try {
      // HEAD answers at once with the current count, before any click.
      const res = await fetch(url, { method: 'HEAD', cache: 'no-store' });
      cursor = res.headers.get('Comet-Cursor');
    } catch (err) {
      statusEl.textContent = 'server unreachable; retrying';
      await new Promise((resolve) => setTimeout(resolve, 1000 + Math.random() * 2000));
    }
  }
  show(idOf(cursor));
  const sub = Comet.subscribe(url, {
    transport: 'longpoll',
    lastEventId: cursor,
    onEvent: (e) => show(e.id),
    // After a server restart the count starts over: show the server's.
    onGap: () => show(idOf(sub.cursor)),
  });
}

document.getElementById('increment').addEventListener('click', () => {
  Comet.publish(url, '').catch(() => {
    statusEl.textContent = 'click not sent: server unreachable';
  });
});
start();
