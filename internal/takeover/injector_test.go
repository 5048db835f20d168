package takeover

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
)

// TestInjectorFollowsItsServer pins how taken-over connections go back
// to their server: a connection injected into a running server is served as
// one of its own, keep-alive included; once the server shuts down, its
// injector says so (answers then carry Connection: close) and takes no
// more, and a server that shut down gets no new injector that would look
// open.
func TestInjectorFollowsItsServer(t *testing.T) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "served")
	})}
	inj := InjectorFor(srv, func(err error) { t.Error(err) })
	if inj == nil || !inj.Open() {
		t.Fatal("a running server has no open injector")
	}
	client, conn := net.Pipe()
	defer client.Close()
	if !inj.Inject(conn) {
		t.Fatal("a running server did not take a connection back")
	}
	fmt.Fprint(client, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(client), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "served" || resp.Close {
		t.Errorf("the injected connection's request got %q, close %v; want it served and kept alive", body, resp.Close)
	}
	client.Close()

	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if inj.Open() {
		t.Error("the injector of a server that shut down is open")
	}
	other, _ := net.Pipe()
	defer other.Close()
	if inj.Inject(other) {
		t.Error("a server that shut down took a connection")
	}
	waitUntil(t, func() bool {
		_, ok := injectors.Load(srv)
		return !ok
	})
	if InjectorFor(srv, func(err error) { t.Error(err) }) != nil {
		t.Error("a server that shut down got a new injector")
	}
}
