// A chat on comet.js: each room is a context (/rooms/<room>), received as a
// stream of Server-Sent Events; a message is a JSON publish to the room.
import { subscribe, publish } from '/client/comet.mjs';
import { line } from './ui.js';

const messagesEl = document.getElementById('messages');
const nameEl = document.getElementById('name');
const textEl = document.getElementById('text');
let room = null;
let sub = null;

async function join(name) {
  if (sub) sub.close();
  room = name;
  messagesEl.replaceChildren();
  for (const button of document.querySelectorAll('#rooms button')) {
    button.classList.toggle('current', button.dataset.room === name);
  }
  const url = `/rooms/${encodeURIComponent(name)}`;
  // Start from id 0 of the room's current epoch, so that a newcomer gets
  // what history still holds, and is told if older messages are gone.
  const head = await fetch(url, { method: 'HEAD', cache: 'no-store' });
  const epoch = head.headers.get('Comet-Cursor').split(':')[0];
  // WebSocket, or SSE where a proxy on the way drops the upgrade.
  sub = subscribe(url, {
    transport: 'websocket',
    lastEventId: `${epoch}:0`,
    onEvent(e) {
      const msg = JSON.parse(e.data);
      line(messagesEl, 'message', [['who', msg.name], ['text', msg.text]]);
    },
    onGap(missed) {
      line(messagesEl, 'notice', [['text', `(${missed} earlier messages are no longer available)`]]);
    },
  });
}

// The transport in use, for a look from the console (and the tests).
window.chatTransport = () => sub && sub.transport;

document.getElementById('rooms').addEventListener('click', (e) => {
  if (e.target.dataset.room) join(e.target.dataset.room);
});

document.getElementById('send').addEventListener('submit', async (e) => {
  e.preventDefault();
  const text = textEl.value;
  textEl.value = '';
  try {
    await publish(`/rooms/${encodeURIComponent(room)}`, { name: nameEl.value, text });
  } catch (err) {
    line(messagesEl, 'notice', [['text', `not sent: ${err.message}`]]);
  }
});

join('lobby');
