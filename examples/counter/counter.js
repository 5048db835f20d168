// The seed's count-clicker in plain JavaScript: poll() parks a GET on
// long_polling, increment() POSTs to it, update() shows the counter from the
// X-JSON header and polls again. Unlike the seed, it sends back the cursor of
// the last answer, so clicks made while it was reconnecting are not lost.
'use strict';

const url = 'long_polling';
const countEl = document.getElementById('count');
const statusEl = document.getElementById('status');
let cursor = null;

function sleep(ms) {
	return new Promise((resolve) => setTimeout(resolve, ms));
}

function update(res) {
	const json = JSON.parse(res.headers.get('X-JSON'));
	countEl.textContent = json.counter;
	cursor = res.headers.get('Comet-Cursor');
}

async function poll() {
	let backoff = 500;
	for (;;) {
		try {
			// HEAD answers at once with the current count and cursor.
			const res = cursor === null
				? await fetch(url, { method: 'HEAD', cache: 'no-store' })
				: await fetch(url, { headers: { 'Last-Event-ID': cursor }, cache: 'no-store' });
			if (res.ok) {
				update(res);
				statusEl.textContent = '';
				backoff = 500;
				continue;
			}
			statusEl.textContent = `server answered ${res.status}; retrying`;
			const retryAfter = Number(res.headers.get('Retry-After'));
			if (retryAfter > 0) {
				backoff = retryAfter * 1000;
			}
		} catch (err) {
			statusEl.textContent = 'server unreachable; retrying';
		}
		// Jitter keeps a crowd of pages from coming back all at once.
		await sleep(backoff / 2 + Math.random() * backoff);
		backoff = Math.min(backoff * 2, 30000);
	}
}

function increment() {
	fetch(url, { method: 'POST' }).catch(() => {
		statusEl.textContent = 'click not sent: server unreachable';
	});
}

document.getElementById('increment').addEventListener('click', increment);
poll();
