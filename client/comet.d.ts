// Types of comet.js loaded with a classic script, which defines the global
// Comet:
//
//   <script src="/client/comet.js"></script>
//   /// <reference path="./client/comet.d.ts" />
//
// An ES module import (comet.mjs) has its types in comet.d.mts.

declare namespace Comet {
  /** How a subscription connects; see transport in comet.js. */
  type Transport = 'auto' | 'websocket' | 'sse' | 'longpoll';

  /** An event as onEvent gets it. */
  interface CometEvent {
    /** The event's id in its context. */
    id: number;
    /** Where the subscription stands after this event; resume from it. */
    cursor: string;
    /** The event's type; 'message' when it has none. */
    type: string;
    /** The payload, as text. */
    data: string;
    /** In a subscription to several contexts: the event's context. */
    context?: string;
  }

  /** How many events were lost, or 'unknown'. */
  type Missed = number | 'unknown';

  /** A token, or what hands one out before every connection. */
  type TokenSource = string | (() => string | Promise<string>);

  interface SubscribeOptions {
    onEvent?(e: CometEvent): void;
    /** Events were lost to the client; context says where, with several. */
    onGap?(missed: Missed, context?: string): void;
    /** The context was deleted; the subscription is over. */
    onDeleted?(context?: string): void;
    transport?: Transport;
    /** A cursor kept from an earlier page, to resume from. */
    lastEventId?: string;
    /** SSE event types to receive besides the default 'message'. */
    types?: string[];
    token?: TokenSource;
    /** The cookie that carries the token for EventSource and WebSocket. */
    tokenCookie?: string;
  }

  interface Subscription {
    /** The cursor of the last event, or null before the first. */
    readonly cursor: string | null;
    /** The transport in use, after any fallback. */
    readonly transport: 'websocket' | 'sse' | 'longpoll';
    close(): void;
  }

  interface PublishOptions {
    /** The event's type (Comet-Event-Type). */
    type?: string;
    /** The Content-Type of a string payload. */
    contentType?: string;
    /** Makes a retry of this publish publish nothing new. */
    idempotencyKey?: string;
    token?: TokenSource;
  }

  /** What the server answers a publish with. */
  interface Receipt {
    id: number;
    cursor: string;
    /** How many subscribers the event woke on this server. */
    woken: number;
  }

  /** Subscribes to one context, or to several of a multiplex route. */
  function subscribe(target: string | string[], options?: SubscribeOptions): Subscription;
  /** Publishes data: a string as it is, anything else as JSON. */
  function publish(url: string, data: unknown, options?: PublishOptions): Promise<Receipt>;
}
