// comet.mjs: comet.js as an ES module. The implementation is comet.js,
// which a classic <script> can load too; importing it runs it once.
import './comet.js';

export const { subscribe, publish } = globalThis.Comet;
export default globalThis.Comet;
