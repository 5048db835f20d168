// Types of comet.mjs, the ES module:
//
//   import { subscribe, publish } from '/client/comet.mjs';
//
// They are those of the global Comet (comet.d.ts).
/// <reference path="./comet.d.ts" />

export type Transport = Comet.Transport;
export type CometEvent = Comet.CometEvent;
export type Missed = Comet.Missed;
export type TokenSource = Comet.TokenSource;
export type SubscribeOptions = Comet.SubscribeOptions;
export type Subscription = Comet.Subscription;
export type PublishOptions = Comet.PublishOptions;
export type Receipt = Comet.Receipt;

export declare const subscribe: typeof Comet.subscribe;
export declare const publish: typeof Comet.publish;
declare const _default: typeof Comet;
export default _default;
