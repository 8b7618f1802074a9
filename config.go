package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"net/netip"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Configuration: every setting read from the environment (and .env) and checked at start, so
// that a bad value stops the program with one message naming every bad setting.

// config is every setting of the service, read from the environment by loadConfig.
type config struct {
	databaseURL          string
	keys                 keySet
	accessTTL            time.Duration
	refreshTTL           time.Duration // idle limit of a session: each refresh token's lifetime
	sessionLifetime      time.Duration // absolute limit: no refresh outlives login by more
	refreshReuseInterval time.Duration
	loginMaxFailures     int
	authRateLimit        int // requests per minute per client address; 0: no limit
	authRateBurst        int
	trustedProxies       []netip.Prefix
	bcryptConcurrency    int
	addr                 string
	metricsAddr          string // where GET /metrics listens; empty: nowhere
	logFormat            string // logText or logJSON
	tuneGC               bool   // GOGC unset: the server paces the collector (gctune.go)
	bcryptCost           int
	passwordMinLength    int
	resetTTL             time.Duration
	verifyTTL            time.Duration
	inviteTTL            time.Duration // INVITE_EXPIRES: how long an invitation can be accepted
	requireVerifiedEmail bool
	commonPasswords      commonPasswords // refused as new passwords; nil when PASSWORD_CHECK_COMMON=false
	mfaIssuer            string          // the issuer authenticator apps show beside a TOTP code
	adminRequireMFA      bool            // admin routes only for sessions opened with a second factor
	mail                 mailConfig
	apiDocs              bool       // serve /openapi.json, /docs and the redirect of /
	cors                 corsPolicy // CORS_ALLOWED_ORIGINS
	webhook              webhookConfig
}

// loadConfig reads and checks every setting, naming each bad one.
func loadConfig(getenv func(string) string) (config, error) {
	var problems []string
	str := func(name, fallback string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return fallback
	}
	num := func(name string, fallback, min, max int) int {
		v := getenv(name)
		if v == "" {
			return fallback
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < min || n > max {
			problems = append(problems, fmt.Sprintf("%s must be an integer from %d to %d", name, min, max))
		}
		return n
	}
	boolean := func(name string) bool {
		v := getenv(name)
		if v == "" {
			return false
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			problems = append(problems, name+" must be true or false")
		}
		return b
	}
	seconds := func(name string, fallback int) time.Duration {
		return time.Duration(num(name, fallback, 1, 1<<31)) * time.Second
	}
	secret, previous := getenv("JWT_SECRET_KEY"), getenv("JWT_SECRET_KEY_PREVIOUS")
	trusted, err := parseCIDRs(getenv("TRUSTED_PROXIES"))
	if err != nil {
		problems = append(problems, "TRUSTED_PROXIES must be a comma-separated list of CIDR prefixes or addresses")
	}
	cors, err := parseCORSOrigins(getenv("CORS_ALLOWED_ORIGINS"))
	if err != nil {
		problems = append(problems, err.Error())
	}
	cfg := config{
		databaseURL:          getenv("DATABASE_URL"),
		keys:                 newKeySet([]byte(secret), []byte(previous)),
		accessTTL:            seconds("JWT_ACCESS_TOKEN_EXPIRES", 3600),
		refreshTTL:           seconds("REFRESH_TOKEN_EXPIRES", 30*24*3600),
		sessionLifetime:      seconds("SESSION_MAX_LIFETIME", 30*24*3600),
		refreshReuseInterval: time.Duration(num("REFRESH_REUSE_INTERVAL", 10, 0, 3600)) * time.Second,
		loginMaxFailures:     num("LOGIN_MAX_FAILURES", 5, 1, 1000),
		authRateLimit:        num("AUTH_RATE_LIMIT", 30, 0, 1_000_000),
		authRateBurst:        num("AUTH_RATE_BURST", 10, 1, 1_000_000),
		trustedProxies:       trusted,
		bcryptConcurrency:    num("BCRYPT_CONCURRENCY", runtime.NumCPU(), 1, 1024),
		addr:                 str("ADDR", ":8080"),
		metricsAddr:          getenv("METRICS_ADDR"),
		logFormat:            str("LOG_FORMAT", logText),
		tuneGC:               getenv("GOGC") == "",
		bcryptCost:           num("BCRYPT_COST", 12, 4, 31),
		passwordMinLength:    num("PASSWORD_MIN_LENGTH", 8, 1, 72),
		resetTTL:             seconds("PASSWORD_RESET_TOKEN_EXPIRES", 3600),
		verifyTTL:            seconds("EMAIL_VERIFICATION_EXPIRES", 24*3600),
		inviteTTL:            seconds("INVITE_EXPIRES", 72*3600),
		requireVerifiedEmail: boolean("REQUIRE_VERIFIED_EMAIL"),
		commonPasswords:      commonPasswordsIf(getenv("PASSWORD_CHECK_COMMON") == "" || boolean("PASSWORD_CHECK_COMMON")),
		mfaIssuer:            str("MFA_ISSUER", "usermgmt"),
		adminRequireMFA:      boolean("ADMIN_REQUIRE_MFA"),
		mail: mailConfig{
			server:         getenv("MAIL_SERVER"),
			username:       getenv("MAIL_USERNAME"),
			password:       getenv("MAIL_PASSWORD"),
			useTLS:         boolean("MAIL_USE_TLS"),
			useSSL:         boolean("MAIL_USE_SSL"),
			insecureTLS:    boolean("MAIL_TLS_INSECURE_SKIP_VERIFY"),
			connectTimeout: 10 * time.Second,
			commandTimeout: 30 * time.Second,
			totalTimeout:   2 * time.Minute,
			maxAttempts:    num("MAIL_MAX_ATTEMPTS", 8, 1, 100),
		},
		apiDocs: getenv("API_DOCS") == "" || boolean("API_DOCS"),
		cors:    cors,
	}
	cfg.webhook = webhookConfig{
		maxAttempts:  num("WEBHOOK_MAX_ATTEMPTS", 12, 1, 100),
		allowHTTP:    boolean("WEBHOOK_ALLOW_HTTP"),
		allowPrivate: boolean("WEBHOOK_ALLOW_PRIVATE"),
		timeout:      10 * time.Second,
		pollInterval: time.Second,
		inFlight:     16,
	}
	cfg.mail.publicURL = strings.TrimRight(str("PUBLIC_URL", "http://localhost"+portSuffix(cfg.addr)), "/")
	cfg.mail.resetURL = str("PASSWORD_RESET_URL", cfg.mail.publicURL+resetPasswordPath+"{token}")
	cfg.mail.verifyURL = str("EMAIL_VERIFICATION_URL", cfg.mail.publicURL+verifyEmailPath+"{token}")
	cfg.mail.inviteURL = str("INVITE_URL", cfg.mail.publicURL+acceptInvitePath+"{token}")
	if cfg.mail.useSSL {
		cfg.mail.port = num("MAIL_PORT", 465, 1, 65535)
	} else {
		cfg.mail.port = num("MAIL_PORT", 25, 1, 65535)
	}
	defaultBackend := mailLog
	if cfg.mail.server != "" {
		defaultBackend = mailSMTP
	}
	cfg.mail.backend = str("MAIL_BACKEND", defaultBackend)
	sender, err := mail.ParseAddress(str("MAIL_DEFAULT_SENDER", "usermgmt@localhost"))
	if err == nil {
		// A quoted local part ("no reply"@example.com) comes back unquoted, and could not be
		// sent as it is: refuse what does not parse again.
		_, err = mail.ParseAddress(sender.Address)
	}
	if err == nil {
		cfg.mail.sender = *sender
	} else {
		problems = append(problems, `MAIL_DEFAULT_SENDER must be an email address, with or without a name: "Acme <no-reply@acme.test>"`)
	}
	if cfg.databaseURL == "" {
		problems = append(problems, "DATABASE_URL is required (`make run` writes one to .env)")
	} else if _, err := pgxpool.ParseConfig(cfg.databaseURL); err != nil {
		problems = append(problems, databaseURLProblem(err))
	}
	if !validListenAddr(cfg.addr) {
		problems = append(problems, "ADDR must be host:port or :port with a port from 0 to 65535, e.g. :8080 or 127.0.0.1:8080")
	}
	if cfg.metricsAddr != "" && !validListenAddr(cfg.metricsAddr) {
		problems = append(problems, "METRICS_ADDR must be host:port or :port with a port from 0 to 65535, e.g. 127.0.0.1:9100 (empty: no metrics)")
	}
	if cfg.logFormat != logText && cfg.logFormat != logJSON {
		problems = append(problems, "LOG_FORMAT must be text or json")
	}
	if getenv("PUBLIC_URL") != "" && !validWebURL(cfg.mail.publicURL, false) {
		problems = append(problems, "PUBLIC_URL must be an absolute http:// or https:// URL with a host and no query or fragment, e.g. https://users.example.com")
	}
	if len(secret) < 32 {
		problems = append(problems, "JWT_SECRET_KEY is required and must be at least 32 bytes (try: openssl rand -hex 32)")
	}
	if previous != "" && len(previous) < 32 {
		problems = append(problems, "JWT_SECRET_KEY_PREVIOUS must be at least 32 bytes when set")
	}
	for _, name := range []string{"PASSWORD_RESET_URL", "EMAIL_VERIFICATION_URL", "INVITE_URL"} {
		if v := getenv(name); v != "" && (!strings.Contains(v, "{token}") || !validWebURL(v, true)) {
			problems = append(problems, name+" must be an absolute http:// or https:// URL with a host, containing {token}")
		}
	}
	switch cfg.mail.backend {
	case mailSMTP:
		if cfg.mail.server == "" {
			problems = append(problems, "MAIL_BACKEND=smtp needs MAIL_SERVER")
		}
	case mailLog, mailDummy:
	default:
		problems = append(problems, "MAIL_BACKEND must be smtp, log or dummy")
	}
	if !validIssuer(cfg.mfaIssuer) {
		problems = append(problems, "MFA_ISSUER must be 1 to 64 printable characters without ':'")
	}
	if cfg.mail.useTLS && cfg.mail.useSSL {
		problems = append(problems, "set MAIL_USE_TLS or MAIL_USE_SSL, not both")
	}
	if len(problems) > 0 {
		return cfg, errors.New("configuration: " + strings.Join(problems, "; "))
	}
	return cfg, nil
}

// validListenAddr reports whether addr is a listen address: an optional host (a name or an IP
// address) and a decimal port, where 0 lets the system pick one.
func validListenAddr(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return false
	}
	if _, err := netip.ParseAddr(host); host == "" || err == nil {
		return true
	}
	return validHostname(host)
}

// validHostname reports whether host is a host name: dot-separated labels of letters, digits,
// inner hyphens and underscores (which container service names may have).
func validHostname(host string) bool {
	if len(host) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(host, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// validWebURL reports whether v is an absolute http or https URL with a host and no user
// information (which would put a password in every mail). withQuery allows a query and a
// fragment, which a base URL must not have: paths are appended to it.
func validWebURL(v string, withQuery bool) bool {
	u, err := url.Parse(v)
	if err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Opaque != "" || u.User != nil || u.Hostname() == "" {
		return false
	}
	return withQuery || u.RawQuery == "" && !u.ForceQuery && u.Fragment == "" && !strings.Contains(v, "#")
}

// databaseURLProblem says why DATABASE_URL does not parse, without quoting it: it may hold a
// password. pgx masks the password where it can tell where it is; quoted parts of its reason
// may be cut from a malformed one, so they are dropped.
func databaseURLProblem(err error) string {
	reason := "not a connection string pgx knows"
	if text := err.Error(); strings.Contains(text, "`: ") {
		reason = text[strings.LastIndex(text, "`: ")+len("`: "):] // after "cannot parse `<the masked string>`"
	}
	reason = quotedText.ReplaceAllString(reason, `"…"`)
	hint := "the form is postgres://USER:PASSWORD@HOST:5432/DATABASE?sslmode=disable"
	if strings.Contains(reason, "URL") {
		hint = "in the user name and password, write % as %25, @ as %40, / as %2F, : as %3A, # as %23, ? as %3F and a space as %20"
	}
	return fmt.Sprintf("DATABASE_URL does not parse: %s (%s)", reason, hint)
}

// portSuffix returns ":port" of a listen address, for the default PUBLIC_URL.
func portSuffix(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil || port == "80" {
		return ""
	}
	return ":" + port
}

// withEnvFile returns a getenv that falls back to the KEY=VALUE lines of path. A missing file
// is not an error; the real environment always wins.
func withEnvFile(getenv func(string) string, path string) (func(string) string, error) {
	if path == "" {
		return getenv, nil
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return getenv, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	values, err := parseEnvFile(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return func(key string) string {
		if v := getenv(key); v != "" {
			return v
		}
		return values[key]
	}, nil
}

// parseEnvFile reads KEY=VALUE lines; blank lines and # comments are skipped, and a value may
// be wrapped in single or double quotes.
func parseEnvFile(r io.Reader) (map[string]string, error) {
	values := map[string]string{}
	scanner := bufio.NewScanner(r)
	for n := 1; scanner.Scan(); n++ {
		line := strings.TrimSpace(scanner.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if !ok || strings.TrimSpace(key) == "" {
			return nil, fmt.Errorf("line %d: want KEY=VALUE", n)
		}
		value = strings.TrimSpace(value)
		if len(value) >= 2 && (value[0] == '"' || value[0] == '\'') && value[len(value)-1] == value[0] {
			value = value[1 : len(value)-1]
		}
		values[strings.TrimSpace(key)] = value
	}
	return values, scanner.Err()
}
