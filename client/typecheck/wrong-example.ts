// Mistakes the declarations must catch (module_test.go expects each).
import { subscribe } from '../comet.mjs';

subscribe('/events', { transport: 'websockets' });
subscribe('/events', { onEvent: (e) => e.data.toFixed() });
const n: number = subscribe('/events').cursor;
