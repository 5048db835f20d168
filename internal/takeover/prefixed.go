package takeover

import "net"

// PrefixedConn is a connection whose first reads return Prefix: bytes that
// were already read from it (a request the client pipelined).
type PrefixedConn struct {
	net.Conn
	Prefix []byte
}

func (c *PrefixedConn) Read(b []byte) (int, error) {
	if len(c.Prefix) > 0 {
		n := copy(b, c.Prefix)
		c.Prefix = c.Prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}
