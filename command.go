package comet

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/caddy-comet/comet/internal/jwtauth"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "comet-token",
		Usage: "--key <secret>|@<file> [--sub <subject>] [--subscribe <pattern>]... [--publish <pattern>]... [--ttl <duration>] [--issuer <iss>] [--audience <aud>]",
		Short: "Prints a token (HS256 JWT) for a comet route with auth",
		Long: `
Prints a JSON Web Token signed with an HMAC secret (HS256) that a comet
route with auth and the same hmac_secret takes.

--key        The HMAC secret, or @file to read it from a file (a final
             newline is dropped). At least 32 bytes.
--sub        The token's subject: who it is for ({comet.subscriber}).
--subscribe  A context the token may subscribe to: a key, or a prefix
             ending in * ("*": every context). Repeatable.
--publish    A context the token may publish to and delete. Repeatable.
--ttl        How long the token is valid. 0: it never expires. Default 1h.
--issuer     The token's iss, if the route checks one.
--audience   The token's aud, if the route checks one.

Example:
  caddy comet-token --key @secret.txt --sub alice --subscribe '/private/alice' --publish '/private/*'
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().String("key", "", "HMAC secret, or @file")
			cmd.Flags().String("sub", "", "subject")
			cmd.Flags().StringArray("subscribe", nil, "context pattern to subscribe to (repeatable)")
			cmd.Flags().StringArray("publish", nil, "context pattern to publish to (repeatable)")
			cmd.Flags().Duration("ttl", time.Hour, "validity; 0: never expires")
			cmd.Flags().String("issuer", "", "iss claim")
			cmd.Flags().String("audience", "", "aud claim")
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdCometToken)
		},
	})
}

func cmdCometToken(fs caddycmd.Flags) (int, error) {
	key, err := readSecretFlag(fs.String("key"))
	if err != nil {
		return 1, err
	}
	subscribe, _ := fs.GetStringArray("subscribe")
	publish, _ := fs.GetStringArray("publish")
	raw, err := signToken(key, tokenRequest{
		subject: fs.String("sub"), grants: jwtauth.Grants{Subscribe: subscribe, Publish: publish},
		ttl: fs.Duration("ttl"), issuer: fs.String("issuer"), audience: fs.String("audience"),
	}, time.Now())
	if err != nil {
		return 1, err
	}
	fmt.Println(raw)
	return 0, nil
}

// readSecretFlag reads --key: the secret itself, or @file.
func readSecretFlag(v string) ([]byte, error) {
	if file, ok := strings.CutPrefix(v, "@"); ok {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		v = strings.TrimRight(string(data), "\r\n")
	}
	if len(v) < 32 {
		return nil, errors.New("--key: the HMAC secret must have at least 32 bytes")
	}
	return []byte(v), nil
}

// tokenRequest is what a token made by comet-token says.
type tokenRequest struct {
	subject          string
	grants           jwtauth.Grants
	ttl              time.Duration // 0: no exp
	issuer, audience string
}

// signToken makes an HS256 token, issued at now.
func signToken(key []byte, req tokenRequest, now time.Time) (string, error) {
	if len(req.grants.Subscribe) == 0 && len(req.grants.Publish) == 0 {
		return "", errors.New("the token would grant nothing: give --subscribe or --publish")
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", err
	}
	std := jwt.Claims{Subject: req.subject, Issuer: req.issuer, IssuedAt: jwt.NewNumericDate(now)}
	if req.ttl > 0 {
		std.Expiry = jwt.NewNumericDate(now.Add(req.ttl))
	}
	if req.audience != "" {
		std.Audience = jwt.Audience{req.audience}
	}
	return jwt.Signed(signer).Claims(std).Claims(jwtauth.Claims{Comet: req.grants}).Serialize()
}
