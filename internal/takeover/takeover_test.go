package takeover

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection, with a small
// send buffer on the server's end.
func tcpPair(t *testing.T) (server, client *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	server, client = s.(*net.TCPConn), c.(*net.TCPConn)
	server.SetWriteBuffer(64 << 10)
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

func rawOf(t *testing.T, c *net.TCPConn) syscall.RawConn {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestWriteStopsWhereTheSocketWouldBlock writes more than the socket
// takes: without waiting, Write returns what went out and no error; with
// waiting, it times out at the socket's deadline, and finishes once the
// reader reads.
func TestWriteStopsWhereTheSocketWouldBlock(t *testing.T) {
	if !Supported {
		t.Skip("writes that never wait need Unix")
	}
	server, client := tcpPair(t)
	raw := rawOf(t, server)
	big := make([]byte, 4<<20) // more than the kernel buffers of both ends hold
	n, err := Write(raw, big, false)
	if err != nil || n == 0 || n >= len(big) {
		t.Fatalf("a write that must not wait wrote %d of %d bytes, %v; want part of it and no error", n, len(big), err)
	}

	server.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	m, err := Write(raw, big[n:], true)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a waiting write to a full socket: %d bytes, %v; want the deadline", m, err)
	}
	n += m

	server.SetWriteDeadline(time.Now().Add(10 * time.Second))
	read := make(chan int64)
	go func() {
		got, _ := io.CopyN(io.Discard, client, int64(len(big)))
		read <- got
	}()
	m, err = Write(raw, big[n:], true)
	if err != nil || n+m != len(big) {
		t.Fatalf("once the reader reads, the waiting write wrote %d, %v; want the rest, %d", m, err, len(big)-n)
	}
	if got := <-read; got != int64(len(big)) {
		t.Errorf("the reader got %d bytes, want %d", got, len(big))
	}
}

// TestHangUpsAreReported watches sockets whose clients close their end,
// with and without sending something first, and one whose watch stopped.
func TestHangUpsAreReported(t *testing.T) {
	if HangUpsWatched() != nil {
		t.Skip("hang-ups are watched with epoll, on Linux")
	}
	server, client := tcpPair(t)
	hungUp := make(chan struct{}, 1)
	if _, ok := WatchHangUp(rawOf(t, server), func() { hungUp <- struct{}{} }); !ok {
		t.Fatal("cannot watch a TCP socket")
	}
	if HasUnread(rawOf(t, server)) {
		t.Error("unread bytes on a socket nobody wrote to")
	}
	client.CloseWrite() // a half-close is a hang-up too
	select {
	case <-hungUp:
	case <-time.After(5 * time.Second):
		t.Fatal("a client's hang-up was not reported")
	}
	if HasUnread(rawOf(t, server)) {
		t.Error("a hang-up counted as unread bytes")
	}

	// A request pipelined before the hang-up is unread, and stays so.
	server, client = tcpPair(t)
	io.WriteString(client, "GET / HTTP/1.1\r\n\r\n")
	client.CloseWrite()
	waitUntil(t, func() bool { return HasUnread(rawOf(t, server)) })
	buf := make([]byte, 64)
	if n, _ := server.Read(buf); string(buf[:n]) != "GET / HTTP/1.1\r\n\r\n" {
		t.Errorf("HasUnread consumed bytes: read %q", buf[:n])
	}

	// A stopped watch reports nothing.
	server, client = tcpPair(t)
	w, _ := WatchHangUp(rawOf(t, server), func() { hungUp <- struct{}{} })
	w.Stop()
	w.Stop()
	client.Close()
	select {
	case <-hungUp:
		t.Error("a stopped watch reported a hang-up")
	case <-time.After(100 * time.Millisecond):
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestPrefixedConnReadsItsPrefixFirst hands a connection on with bytes
// already read from it: a pipelined request and the start of another.
func TestPrefixedConnReadsItsPrefixFirst(t *testing.T) {
	server, client := tcpPair(t)
	c := &PrefixedConn{Conn: server, Prefix: []byte("GET /a HTTP/1.1\r\n\r\nGET /b")}
	io.WriteString(client, " HTTP/1.1\r\n\r\n")
	client.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n" {
		t.Fatalf("read %q, %v", got, err)
	}
}

// TestUnsentCountsWhatTheKernelHolds writes to a socket whose reader does
// not read: what the kernel holds is counted until the reader reads it.
func TestUnsentCountsWhatTheKernelHolds(t *testing.T) {
	if HangUpsWatched() != nil {
		t.Skip("SIOCOUTQ is Linux's")
	}
	server, client := tcpPair(t)
	if n := Unsent(rawOf(t, server)); n != 0 {
		t.Fatalf("%d bytes unsent on a socket nobody wrote to", n)
	}
	// More than the reader's receive buffer takes, so some stays behind.
	big := make([]byte, 8<<20)
	n, _ := Write(rawOf(t, server), big, false)
	if n == 0 {
		t.Fatal("nothing written")
	}
	if unsent := Unsent(rawOf(t, server)); unsent <= 0 || unsent > n {
		t.Fatalf("%d bytes unsent after writing %d that the reader did not read", unsent, n)
	}
	if _, err := io.ReadFull(client, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return Unsent(rawOf(t, server)) == 0 })
}

// TestDiscardUnreadDropsWhatTheClientSent sends bytes nobody reads: once
// discarded, closing the socket sends the client an end of stream, after
// what the server wrote, rather than a reset.
func TestDiscardUnreadDropsWhatTheClientSent(t *testing.T) {
	if HangUpsWatched() != nil {
		t.Skip("Linux only")
	}
	server, client := tcpPair(t)
	io.WriteString(client, "GET / HTTP/1.1\r\n\r\n")
	waitUntil(t, func() bool { return HasUnread(rawOf(t, server)) })
	DiscardUnread(rawOf(t, server))
	if HasUnread(rawOf(t, server)) {
		t.Fatal("bytes left unread after DiscardUnread")
	}
	io.WriteString(server, "last words")
	server.Close()
	got, err := io.ReadAll(client)
	if string(got) != "last words" || err != nil {
		t.Errorf("the client read %q, %v; want the last words and an end of stream", got, err)
	}
}

// TestReadablesAreReportedOnceAndRearmed watches a socket for what its
// client sends: once per arming, at once on rearming when something is
// already there, and a hang-up too.
func TestReadablesAreReportedOnceAndRearmed(t *testing.T) {
	if HangUpsWatched() != nil {
		t.Skip("sockets are watched with epoll, on Linux")
	}
	server, client := tcpPair(t)
	readable := make(chan struct{}, 4)
	w, ok := WatchReadable(rawOf(t, server), func() { readable <- struct{}{} })
	if !ok {
		t.Fatal("cannot watch a TCP socket")
	}
	expect := func(what string, want bool) {
		t.Helper()
		select {
		case <-readable:
			if !want {
				t.Errorf("%s: reported", what)
			}
		case <-time.After(200 * time.Millisecond):
			if want {
				t.Errorf("%s: not reported", what)
			}
		}
	}
	expect("nothing sent", false)
	io.WriteString(client, "ping")
	expect("bytes sent", true)
	io.WriteString(client, "more")
	expect("more bytes before rearming", false)
	if !w.Rearm() {
		t.Fatal("rearming failed")
	}
	expect("bytes unread when rearmed", true)
	buf := make([]byte, 16)
	if n, _ := server.Read(buf); string(buf[:n]) != "pingmore" {
		t.Errorf("read %q", buf[:n])
	}
	w.Rearm()
	expect("everything read", false)
	client.Close()
	expect("a hang-up", true)
	w.Stop()
}

func TestPendingTellsUnreadFromClosed(t *testing.T) {
	if HangUpsWatched() != nil {
		t.Skip("Linux only")
	}
	server, client := tcpPair(t)
	if unread, closed := Pending(rawOf(t, server)); unread || closed {
		t.Errorf("a quiet socket: unread %v, closed %v", unread, closed)
	}
	io.WriteString(client, "x")
	waitUntil(t, func() bool { unread, _ := Pending(rawOf(t, server)); return unread })
	client.Close()
	if unread, closed := Pending(rawOf(t, server)); !unread || closed {
		t.Errorf("a byte before the close: unread %v, closed %v", unread, closed)
	}
	server.Read(make([]byte, 1))
	waitUntil(t, func() bool { _, closed := Pending(rawOf(t, server)); return closed })
}

// TestEdgeTriggeredWatchesKeepWhatTheySaw turns a watch edge-triggered
// (Await) and changes what it calls and for what, as a connection served
// in place does, without a system call: what the client sends while only
// its end is guarded is counted (Sent), so the reader knows to read; a
// function set after the client ended its side is called at once, as a
// level-triggered watch would report it again.
func TestEdgeTriggeredWatchesKeepWhatTheySaw(t *testing.T) {
	if HangUpsWatched() != nil {
		t.Skip("hang-ups are watched with epoll, on Linux")
	}
	server, client := tcpPair(t)
	raw := rawOf(t, server)
	calls := make(chan string, 8)
	w, ok := WatchHangUp(raw, func() { calls <- "hang-up" })
	if !ok {
		t.Fatal("cannot watch a TCP socket")
	}
	expect := func(want string) {
		t.Helper()
		select {
		case got := <-calls:
			if got != want {
				t.Fatalf("called %q, want %q", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%q was not called", want)
		}
	}
	expectNothing := func() {
		t.Helper()
		select {
		case got := <-calls:
			t.Fatalf("called %q, want nothing", got)
		case <-time.After(100 * time.Millisecond):
		}
	}

	if !w.Await(func() { calls <- "readable" }) {
		t.Fatal("Await failed")
	}
	io.WriteString(client, "one")
	expect("readable")
	buf := make([]byte, 16)
	sent := w.Sent()
	if n, _ := ReadNow(raw, buf); string(buf[:n]) != "one" {
		t.Fatalf("read %q", buf[:n])
	}

	// Guarded, something sent calls nothing, but is counted.
	if !w.Guard(func() { calls <- "guard" }) {
		t.Fatal("Guard failed")
	}
	io.WriteString(client, "two")
	expectNothing()
	if w.Sent() == sent {
		t.Error("what the client sent while guarded was not counted")
	}
	if n, _ := ReadNow(raw, buf); string(buf[:n]) != "two" {
		t.Fatalf("read %q", buf[:n])
	}

	// The client ends its side while guarded: the guard is called, and
	// so is what is set after it, at once.
	client.CloseWrite()
	expect("guard")
	if !w.Await(func() { calls <- "readable" }) {
		t.Fatal("Await failed")
	}
	expect("readable")
	if !w.Replace(func() { calls <- "replaced" }) {
		t.Fatal("an edge-triggered watch is always armed")
	}
	expect("replaced")
	w.Stop()
}
