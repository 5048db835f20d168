// Package takeover holds the socket mechanics of connections that comet
// takes over from net/http (hijacks): writing without waiting, learning
// that a client hung up without a goroutine per connection, handing a
// connection back to its server with the bytes already read from it, and
// writing an HTTP/1.1 answer byte for byte as net/http would. It knows
// nothing of comet's protocol; every function has one signature on every
// platform, and Supported and HangUpsWatched say what the platform can do.
package takeover
