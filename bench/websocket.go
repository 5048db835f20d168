package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// websocket reads a WebSocket, reconnecting from its last cursor, until
// ctx ends. comet sends each event as a JSON message with its cursor and
// data; Nchan sends the event's data as it is.
func (s *subscriber) websocket(ctx context.Context, attached *sync.WaitGroup, tlsConfig *tls.Config) {
	once := sync.OnceFunc(attached.Done)
	defer once()
	for ctx.Err() == nil {
		conn, err := s.dialWebSocket(ctx, tlsConfig)
		once() // attached once the socket is open, or has failed to
		if err != nil {
			if ctx.Err() == nil {
				s.fail("websocket: " + err.Error())
				time.Sleep(100 * time.Millisecond)
			}
			continue
		}
		protocolSeen.Store("websocket")
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		s.readWebSocket(conn)
		stop()
		conn.Close()
	}
}

func (s *subscriber) dialWebSocket(ctx context.Context, tlsConfig *tls.Config) (net.Conn, error) {
	u, err := url.Parse(s.url)
	if err != nil {
		return nil, err
	}
	u.Scheme = strings.Replace(u.Scheme, "http", "ws", 1)
	if !s.nchan && s.cursor != "" {
		q := u.Query()
		q.Set("last_event_id", s.cursor)
		u.RawQuery = q.Encode()
	}
	d := ws.Dialer{TLSConfig: tlsConfig, Timeout: 30 * time.Second}
	if bearerToken != "" {
		d.Header = ws.HandshakeHeaderString("Authorization: Bearer " + bearerToken + "\r\n")
	}
	conn, br, _, err := d.Dial(ctx, u.String())
	if err != nil {
		return nil, err
	}
	if br != nil {
		// What came with the handshake's answer is read first.
		return &bufferedConn{Conn: conn, r: io.MultiReader(br, conn)}, nil
	}
	return conn, nil
}

type bufferedConn struct {
	net.Conn
	r io.Reader
}

func (c *bufferedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// readWebSocket reads frames until the socket ends, answering pings.
func (s *subscriber) readWebSocket(conn net.Conn) {
	for {
		f, err := ws.ReadFrame(conn)
		if err != nil {
			return
		}
		switch f.Header.OpCode {
		case ws.OpPing:
			_ = ws.WriteFrame(conn, ws.MaskFrame(ws.NewPongFrame(f.Payload)))
		case ws.OpClose:
			return
		case ws.OpText:
			if s.nchan {
				s.record(string(f.Payload))
				continue
			}
			var m struct {
				Control string `json:"control"`
				Cursor  string `json:"cursor"`
				Data    string `json:"data"`
			}
			if json.Unmarshal(f.Payload, &m) != nil {
				s.fail("websocket: a message that is not JSON")
				continue
			}
			if m.Cursor != "" {
				s.cursor = m.Cursor
			}
			switch m.Control {
			case "":
				s.record(m.Data)
			case "missed":
				s.fail("websocket: missed " + string(f.Payload))
			}
		}
	}
}
