// A page that loads comet.js with a classic script tag uses the global.
/// <reference path="../comet.d.ts" />

const counter = Comet.subscribe('/counter', {
  transport: 'sse',
  onEvent: (e: Comet.CometEvent) => { document.title = e.data; },
});
void Comet.publish('/counter', { n: 1 }).then((r: Comet.Receipt) => console.log(r.cursor, r.woken));
counter.close();
