// The README's example, as a bundler-built page imports the client.
import { subscribe, publish, type CometEvent, type Subscription } from '../comet.mjs';

const seen: CometEvent[] = [];
const sub: Subscription = subscribe('/events/news', {
  transport: 'websocket',
  lastEventId: localStorage.getItem('cursor') ?? undefined,
  token: async () => (await fetch('/my-token')).text(),
  onEvent(e) {
    seen.push(e);
    localStorage.setItem('cursor', e.cursor);
  },
  onGap(missed) {
    if (missed === 'unknown') location.reload();
    else console.warn(`${missed} events lost`);
  },
});
const rooms = subscribe(['/together?room=lobby', '/together?room=news'], {
  onEvent: (e) => console.log(e.context, e.id, e.data),
  onGap: (missed, context) => console.warn(missed, context),
});

async function send(text: string): Promise<number> {
  const receipt = await publish('/events/news', text, { type: 'greeting', idempotencyKey: crypto.randomUUID() });
  return receipt.id;
}

void send('hello').then(() => {
  console.log(sub.transport, sub.cursor);
  sub.close();
  rooms.close();
});
