// Every room of the chat on one connection: the route /together takes
// ?room=<room> repeated (multiplex room) and streams the rooms' contexts,
// /rooms/<room>, as one stream whose events say their context.
import { subscribe, publish } from '/client/comet.mjs';
import { line } from './ui.js';

const rooms = ['lobby', 'games', 'music'];
const urls = rooms.map((room) => `/together?room=${encodeURIComponent(room)}`);
const listOf = (context) => document.querySelector(`ul[data-room="${CSS.escape(context.replace('/rooms/', ''))}"]`);

// Start every room from id 0 of its current epoch, so that the page shows
// what history still holds: HEAD gives the cursor of all three.
const head = await fetch(`/together?${rooms.map((r) => `room=${encodeURIComponent(r)}`).join('&')}`, { method: 'HEAD', cache: 'no-store' });
const fromStart = head.headers.get('Comet-Cursor').split(',').map((cursor) => `${cursor.split(':')[0]}:0`).join(',');

subscribe(urls, {
  transport: 'sse',
  lastEventId: fromStart,
  onEvent(e) {
    const msg = JSON.parse(e.data);
    line(listOf(e.context), 'message', [['who', msg.name], ['text', msg.text]]);
  },
  onGap(missed, context) {
    line(listOf(context), 'notice', [['text', `(${missed} earlier messages are no longer available)`]]);
  },
});

document.getElementById('send').addEventListener('submit', async (e) => {
  e.preventDefault();
  const text = document.getElementById('text');
  const room = document.getElementById('room').value;
  try {
    await publish(`/rooms/${encodeURIComponent(room)}`, { name: document.getElementById('name').value, text: text.value });
    text.value = '';
  } catch (err) {
    line(listOf(`/rooms/${room}`), 'notice', [['text', `not sent: ${err.message}`]]);
  }
});
