package comet

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// TestSecretsStayOutOfTheConfigAPI: written as {env.*} placeholders, the
// Redis URL's password and the token secret are what Caddy's admin API
// shows of them (GET /config/ gives the config as loaded), while what the
// module uses is the variables' values.
func TestSecretsStayOutOfTheConfigAPI(t *testing.T) {
	r := startRedisWithPassword(t, "a-redis-password-for-tests")
	t.Setenv("COMET_TEST_REDIS_URL", r.url())
	t.Setenv("COMET_TEST_KEY", testSecret)
	s := startCaddy(t, "comet {\n\t\tbroker redis {env.COMET_TEST_REDIS_URL}\n\t}", `comet /p/* {
		auth publish {
			hmac_secret {env.COMET_TEST_KEY}
		}
	}`)
	resp, err := http.Get(s.admin + "/config/")
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, placeholder := range []string{"{env.COMET_TEST_REDIS_URL}", "{env.COMET_TEST_KEY}"} {
		if !strings.Contains(string(cfg), placeholder) {
			t.Errorf("GET /config/ does not show %s: %s", placeholder, cfg)
		}
	}
	for _, secret := range []string{r.password, testSecret} {
		if strings.Contains(string(cfg), secret) {
			t.Errorf("GET /config/ shows the secret %q", secret)
		}
	}
	// The values are what is used: a token signed with the variable's
	// secret publishes, through the Redis that wants the password.
	tok := mint(t, []byte(testSecret), jose.HS256, "backend", time.Minute, grants{Publish: []string{"/p/*"}})
	if resp, body := s.do(http.MethodPost, "/p/x", "through redis", bearer(tok)...); resp.StatusCode != http.StatusOK {
		t.Fatalf("publishing with the variables' values: %s %q", resp.Status, body)
	}
	if s.hub(DefaultHubName).Broker() == nil {
		t.Error("the hub has no broker: the publish did not go through Redis")
	}
}
