package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed schema.sql
var schemaSQL string

// Advisory lock keys: one serialises schema changes between instances starting together, the
// other serialises every change that could leave the service without an active admin.
const (
	schemaLockKey = 0x75736572_6d676d74 // "usermgmt"
	adminLockKey  = 0x75736572_61646d6e // "useradmn"
)

// store owns the connection pool. Where SQL lives: a feature file holds its handlers and their
// store methods (the SQL there is business logic: lock order, caps, one-statement lockouts);
// this file holds the pool, the schema apply, the user row and its scanning, the lookups and
// writes several features share, and the janitor.
type store struct {
	pool    *pgxpool.Pool
	now     func() time.Time
	sealer  sealer // for tokens in the mail outbox and TOTP secrets
	policy  policy
	metrics *metrics // what /metrics reports of this process's requests
	// schemaApplied says whether this process applied schema.sql (rather than finding the
	// database at its digest already): logged at start, so that instances starting together
	// show which one did.
	schemaApplied bool
}

// policy is what the store enforces, set once when it opens: how long sessions, refresh tokens
// and mailed tokens live, when a reused refresh token is a retry rather than theft, and how
// many failed logins lock an account out.
type policy struct {
	sessionLifetime  time.Duration // absolute: no session outlives its login by more
	refreshTTL       time.Duration // idle: each refresh token's lifetime, within the above
	reuseInterval    time.Duration
	verifyTTL        time.Duration
	resetTTL         time.Duration
	inviteTTL        time.Duration
	loginMaxFailures int
}

// policyOf is the policy the configuration sets.
func policyOf(cfg config) policy {
	return policy{
		sessionLifetime:  cfg.sessionLifetime,
		refreshTTL:       cfg.refreshTTL,
		reuseInterval:    cfg.refreshReuseInterval,
		verifyTTL:        cfg.verifyTTL,
		resetTTL:         cfg.resetTTL,
		inviteTTL:        cfg.inviteTTL,
		loginMaxFailures: cfg.loginMaxFailures,
	}
}

// user is a row of the users table. The hash and token version never leave the server.
type user struct {
	ID            int64     `json:"id"`
	Username      string    `json:"username"`
	FirstName     string    `json:"first_name"`
	LastName      string    `json:"last_name"`
	Email         string    `json:"email"`
	Role          string    `json:"role"`
	IsActive      bool      `json:"is_active"`
	EmailVerified bool      `json:"email_verified"`
	MFAEnabled    bool      `json:"mfa_enabled"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
	// Invited: created by an admin without a password, not yet accepted. Its hash is '', which
	// no password matches (hasher.check meets it with the dummy hash, as for a wrong password).
	Invited      bool            `json:"invited"`
	UserMetadata json.RawMessage `json:"user_metadata"` // a JSON object the user writes
	AppMetadata  json.RawMessage `json:"app_metadata"`  // a JSON object only admins write
	PasswordHash string          `json:"-"`
	TokenVersion int64           `json:"-"`
}

const (
	roleAdmin = "Admin"
	roleUser  = "User"
)

// userFields is the one list of the users table's columns a user row holds, each with its
// field: the SELECT lists and the scan path are made from it, so a new column is one line here
// (and its line in schema.sql). Scanning into fields by pointer, rather than by reflection,
// keeps the per-request authentication query cheap.
var userFields = []struct {
	column string
	field  func(*user) any
}{
	{"id", func(u *user) any { return &u.ID }},
	{"username", func(u *user) any { return &u.Username }},
	{"first_name", func(u *user) any { return &u.FirstName }},
	{"last_name", func(u *user) any { return &u.LastName }},
	{"email", func(u *user) any { return &u.Email }},
	{"role", func(u *user) any { return &u.Role }},
	{"is_active", func(u *user) any { return &u.IsActive }},
	{"email_verified", func(u *user) any { return &u.EmailVerified }},
	{"mfa_enabled", func(u *user) any { return &u.MFAEnabled }},
	{"created_at", func(u *user) any { return &u.CreatedAt }},
	{"updated_at", func(u *user) any { return &u.UpdatedAt }},
	{"password_hash = ''", func(u *user) any { return &u.Invited }}, // an invited user has no password yet
	// As bytes: PostgreSQL checked the JSON when it was stored, and a json.RawMessage would be
	// scanned through json.Unmarshal, which checks it again on every read.
	{"user_metadata", func(u *user) any { return (*[]byte)(&u.UserMetadata) }},
	{"app_metadata", func(u *user) any { return (*[]byte)(&u.AppMetadata) }},
	{"password_hash", func(u *user) any { return &u.PasswordHash }},
	{"token_version", func(u *user) any { return &u.TokenVersion }},
}

// userColumns is the SELECT list of a user row; qualifiedUserColumns the same of a users
// table aliased u, for joins.
var userColumns, qualifiedUserColumns = userColumnList(""), userColumnList("u.")

func userColumnList(qualifier string) string {
	columns := make([]string, len(userFields))
	for i, f := range userFields {
		columns[i] = qualifier + f.column
	}
	return strings.Join(columns, ", ")
}

// openStore connects to the configuration's database, with its policy, and applies the schema,
// retrying while the database is still starting (for up to wait).
func openStore(ctx context.Context, conf config, now func() time.Time, wait time.Duration) (*store, error) {
	cfg, err := pgxpool.ParseConfig(conf.databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	// Requests are short and CPU-bound on the server side: a few connections per core keep
	// PostgreSQL busy without queueing inside it.
	cfg.MaxConns = int32(max(4, 2*runtime.NumCPU()))
	cfg.AfterConnect = scanTimesInUTC
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	s := &store{pool: pool, now: now, sealer: newSealer(conf.keys), policy: policyOf(conf), metrics: newMetrics()}
	deadline := time.Now().Add(wait)
	for {
		err = s.applySchema(ctx)
		if err == nil || !isUnavailable(err) && !isLockConflict(err) || refusedConnection(err) != nil || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-time.After(500 * time.Millisecond):
			continue
		}
		break
	}
	if err == nil {
		err = s.resealTOTPSecrets(ctx)
	}
	if err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

func (s *store) close() { s.pool.Close() }

// scanTimesInUTC makes every timestamptz a connection reads a UTC time, so that replies show
// times in one zone whatever the server's TimeZone, without a .UTC() at each scan.
func scanTimesInUTC(_ context.Context, conn *pgx.Conn) error {
	conn.TypeMap().RegisterType(&pgtype.Type{
		Name: "timestamptz", OID: pgtype.TimestamptzOID, Codec: &pgtype.TimestamptzCodec{ScanLocation: time.UTC},
	})
	return nil
}

// applySchema runs schema.sql under an advisory lock so that instances starting together do
// not race each other's CREATE statements. A database already at this schema (its digest is
// recorded in schema_version) is left untouched: DDL such as ALTER TABLE takes locks that
// would stall, or deadlock with, the traffic of instances already running.
func (s *store) applySchema(ctx context.Context) error {
	digest := sha256.Sum256([]byte(schemaSQL))
	version := hex.EncodeToString(digest[:])
	applied := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Transaction-scoped, so it is safe behind a pooler in transaction mode (PgBouncer),
		// where a session-level lock would be held by whichever client next got the connection.
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(schemaLockKey)); err != nil {
			return fmt.Errorf("lock schema: %w", err)
		}
		var recorded bool
		if err := tx.QueryRow(ctx, "SELECT to_regclass('schema_version') IS NOT NULL").Scan(&recorded); err != nil {
			return fmt.Errorf("read schema version: %w", err)
		}
		var current string
		if recorded {
			err := tx.QueryRow(ctx, "SELECT digest FROM schema_version").Scan(&current)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("read schema version: %w", err)
			}
		}
		if current == version {
			return nil
		}
		if _, err := tx.Exec(ctx, schemaSQL); err != nil {
			return fmt.Errorf("apply schema: %w", err)
		}
		_, err := tx.Exec(ctx, `INSERT INTO schema_version (id, digest, applied_at) VALUES (1, $1, now())
			ON CONFLICT (id) DO UPDATE SET digest = $1, applied_at = now()`, version)
		applied = err == nil
		return err
	})
	s.schemaApplied = err == nil && applied
	return err
}

// isLockConflict reports a deadlock or lock timeout: worth another try.
func isLockConflict(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40P01" || pgErr.Code == "55P03")
}

// ping reports whether the database answers.
func (s *store) ping(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, ";")
	return err
}

// newUser holds the fields of a user to create.
type newUser struct {
	Username  string
	FirstName string
	LastName  string
	Email     string
}

func insertUser(ctx context.Context, tx pgx.Tx, u newUser, passwordHash, role string, verified bool) (int64, error) {
	var id int64
	err := tx.QueryRow(ctx, `INSERT INTO users (username, first_name, last_name, email, password_hash, role, email_verified)
		VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id`,
		u.Username, u.FirstName, u.LastName, u.Email, passwordHash, role, verified).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("create user: %w", uniqueViolation(err))
	}
	return id, nil
}

// userByID returns the user with the given id, or errNotFound.
func (s *store) userByID(ctx context.Context, id int64) (user, error) {
	return queryUser(ctx, s.pool, "SELECT "+userColumns+" FROM users WHERE id = $1", id)
}

// userByLogin finds a user by username or, when the login holds an '@', by email; both match
// regardless of ASCII letter case (foldCase), the rule of the unique indexes. Usernames cannot
// contain '@', so the two never collide.
func (s *store) userByLogin(ctx context.Context, login string) (user, error) {
	column := "username"
	if strings.Contains(login, "@") {
		column = "email"
	}
	return queryUser(ctx, s.pool, "SELECT "+userColumns+" FROM users WHERE lower("+column+` COLLATE "C") = lower($1 COLLATE "C")`, login)
}

func queryUser(ctx context.Context, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, sql string, args ...any) (user, error) {
	var u user
	err := scanUser(db.QueryRow(ctx, sql, args...), &u)
	return u, err
}

// scanUser reads a row that starts with userColumns into u, and the columns after them into
// extra. A missing row is errNotFound.
func scanUser(row pgx.Row, u *user, extra ...any) error {
	dest := make([]any, 0, len(userFields)+len(extra))
	for _, f := range userFields {
		dest = append(dest, f.field(u))
	}
	err := row.Scan(append(dest, extra...)...)
	if errors.Is(err, pgx.ErrNoRows) {
		return errNotFound
	}
	if err != nil {
		return fmt.Errorf("query user: %w", err)
	}
	return nil
}

// uniqueViolation turns a unique-index violation into a conflict naming the field.
func uniqueViolation(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
		return err
	}
	field := "username"
	if strings.Contains(pgErr.ConstraintName, "email") {
		field = "email"
	}
	return takenError(field == "username", field == "email")
}

// takenError is the conflict naming the taken fields, at least one of the two.
func takenError(username, email bool) error {
	e := &clientError{kind: errConflict, message: "Username and email already exist",
		fields: map[string]string{"username": "already taken", "email": "already taken"}}
	switch {
	case !email:
		e.message = "Username already exists"
		delete(e.fields, "email")
	case !username:
		e.message = "Email already exists"
		delete(e.fields, "username")
	}
	return e
}

// takenFields widens the conflict err of a write that gave a user username and email (nil:
// left alone) to every one of them another user than except holds, since the index that
// failed the write names only one. That one stays named even if its holder is gone by now.
func (s *store) takenFields(ctx context.Context, err error, except int64, username, email *string) error {
	var ce *clientError
	if !errors.As(err, &ce) || !errors.Is(err, errConflict) || ce.fields["username"] == "" && ce.fields["email"] == "" {
		return err
	}
	var usernameTaken, emailTaken bool
	// After the write's transaction: it was undone, and holds no connection while this runs.
	lookupErr := s.pool.QueryRow(ctx, `SELECT
			EXISTS (SELECT 1 FROM users WHERE lower(username) = lower($2) AND id <> $1),
			EXISTS (SELECT 1 FROM users WHERE lower(email) = lower($3) AND id <> $1)`,
		except, username, email).Scan(&usernameTaken, &emailTaken)
	if lookupErr != nil {
		return err // the conflict found stands on its own
	}
	return takenError(usernameTaken || ce.fields["username"] != "", emailTaken || ce.fields["email"] != "")
}

// jsonText returns v as JSON text for a json or jsonb parameter. Every pgx query mode sends a
// string as it is, while a Go map or struct needs the column's type from a described
// statement, which QueryExecModeExec (what DATABASE_URL names behind PgBouncer's transaction
// pooling) never has.
func jsonText(v any) (string, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("encode json: %w", err)
	}
	return string(raw), nil
}

// randomToken returns 256 random bits, base64url-encoded (43 characters).
func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashToken(token string) []byte {
	sum := sha256.Sum256([]byte(token))
	return sum[:]
}

// deleteExpired removes rows that can no longer matter: spent limits and failure counts,
// expired tokens, sessions that ended more than a day ago (with their refresh tokens), and
// mail sent or given up and webhook deliveries delivered more than 30 days ago. The audit log
// is history and stays, and so do failed deliveries, for an admin to retry.
func (s *store) deleteExpired(ctx context.Context) error {
	now := s.now()
	for _, sql := range []string{
		"DELETE FROM rate_limits WHERE updated_at < $1::timestamptz - interval '1 hour'",
		"DELETE FROM login_failures WHERE updated_at < $1::timestamptz - interval '1 day' AND (locked_until IS NULL OR locked_until < $1)",
		"DELETE FROM password_reset_tokens WHERE expires_at < $1",
		"DELETE FROM email_verification_tokens WHERE expires_at < $1",
		"DELETE FROM invitation_tokens WHERE expires_at < $1",
		"DELETE FROM mail_outbox WHERE COALESCE(sent_at, failed_at) < $1::timestamptz - interval '30 days'",
		"DELETE FROM webhook_deliveries WHERE delivered_at < $1::timestamptz - interval '30 days'",
		"DELETE FROM sessions WHERE COALESCE(revoked_at, expires_at) < $1::timestamptz - interval '1 day'",
		"DELETE FROM refresh_tokens WHERE expires_at < $1",
		"DELETE FROM mfa_tokens WHERE expires_at < $1",
	} {
		if _, err := s.pool.Exec(ctx, sql, now); err != nil {
			return fmt.Errorf("delete expired: %w", err)
		}
	}
	return nil
}

// sweepExpired runs deleteExpired every ten minutes until ctx is done.
func sweepExpired(ctx context.Context, st *store, logger *slog.Logger) {
	ticker := time.NewTicker(10 * time.Minute)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			if err := st.deleteExpired(ctx); err != nil && ctx.Err() == nil {
				logger.Warn("sweeping expired rows", "err", err)
			}
		}
	}
}

var quotedText = regexp.MustCompile(`"[^"]*"`)

// openError says what kept the database from opening. pgx's own messages name the user, the
// database and the server, never the password.
func openError(err error) error {
	if pgErr := refusedConnection(err); pgErr != nil && pgErr.Code == "3D000" {
		return fmt.Errorf("DATABASE_URL: %s on %s: create it, or name another database", pgErr.Message, serverOf(err))
	} else if pgErr != nil {
		return fmt.Errorf("DATABASE_URL: %s refused the login: %s: check the user name and password", serverOf(err), pgErr.Message)
	}
	if isUnavailable(err) {
		return fmt.Errorf("DATABASE_URL: %w (is PostgreSQL running? `make run` starts it)", err)
	}
	return fmt.Errorf("open database: %w", err)
}

// refusedConnection is the server's refusal of DATABASE_URL itself, or nil: the database does
// not exist (3D000), or the login was refused (28P01 a wrong password, 28000 an unknown role or
// no pg_hba.conf entry). Waiting for the server does not mend these.
func refusedConnection(err error) *pgconn.PgError {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "3D000" || pgErr.Code == "28P01" || pgErr.Code == "28000") {
		return pgErr
	}
	return nil
}

// serverOf names the PostgreSQL server of a connection error: host (or socket directory) and port.
func serverOf(err error) string {
	var connectErr *pgconn.ConnectError
	if !errors.As(err, &connectErr) {
		return "the server"
	}
	return fmt.Sprintf("the server at %s", net.JoinHostPort(connectErr.Config.Host, strconv.Itoa(int(connectErr.Config.Port))))
}
