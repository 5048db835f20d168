package comet

import (
	"encoding/json"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// TestHealthFollowsTheBroker: GET /comet/health is 200 while every hub
// hears its broker, turns 503 within a few probe intervals of Redis
// pausing (SIGSTOP: the connection stays up, nothing answers, as a hung
// server or a silent network does), and 200 again once it resumes.
func TestHealthFollowsTheBroker(t *testing.T) {
	r := startRedis(t)
	s := startCaddy(t, "comet {\n\t\thealth_interval 100ms\n\t\tbroker redis "+r.url()+"\n\t}\n\tcomet local {\n\t}", `comet /c/*`)
	health := func() (int, healthReport) {
		resp, err := http.Get(s.admin + "/comet/health")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var report healthReport
		if err := json.NewDecoder(resp.Body).Decode(&report); err != nil {
			t.Fatalf("decoding the health report: %v", err)
		}
		return resp.StatusCode, report
	}
	waitFor(t, "the hub to hear its first probe", func() bool { status, _ := health(); return status == http.StatusOK })
	_, report := health()
	if hl := report.Hubs[DefaultHubName]; !hl.Broker || !hl.OK || hl.LastHeard.IsZero() {
		t.Errorf("the default hub's health: %+v", hl)
	}
	if hl, ok := report.Hubs["local"]; !ok || hl.Broker || !hl.OK {
		t.Errorf("a hub without a broker: %+v (listed: %v)", hl, ok)
	}

	if err := r.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	resumed := false
	defer func() {
		if !resumed {
			r.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	waitFor(t, "health to fail while redis is paused", func() bool { status, _ := health(); return status == http.StatusServiceUnavailable })
	if took := time.Since(paused); took > 2*time.Second {
		t.Errorf("health failed %v after redis paused, want within a few 100ms intervals", took)
	}
	_, report = health()
	if hl := report.Hubs[DefaultHubName]; hl.OK || hl.Problem == "" || report.OK {
		t.Errorf("while paused: %+v", report)
	}

	r.cmd.Process.Signal(syscall.SIGCONT)
	resumed = true
	waitFor(t, "health to come back after redis resumed", func() bool { status, _ := health(); return status == http.StatusOK })
}
