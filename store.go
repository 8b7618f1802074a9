package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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

// store owns the connection pool and every SQL statement of the service.
type store struct {
	pool   *pgxpool.Pool
	now    func() time.Time
	sealer sealer // for tokens in the mail outbox
}

// user is a row of the users table. The hash and token version never leave the server.
type user struct {
	ID            int64     `json:"id" db:"id"`
	Username      string    `json:"username" db:"username"`
	FirstName     string    `json:"first_name" db:"first_name"`
	LastName      string    `json:"last_name" db:"last_name"`
	Email         string    `json:"email" db:"email"`
	Role          string    `json:"role" db:"role"`
	IsActive      bool      `json:"is_active" db:"is_active"`
	EmailVerified bool      `json:"email_verified" db:"email_verified"`
	CreatedAt     time.Time `json:"created_at" db:"created_at"`
	UpdatedAt     time.Time `json:"updated_at" db:"updated_at"`
	PasswordHash  string    `json:"-" db:"password_hash"`
	TokenVersion  int64     `json:"-" db:"token_version"`
}

const (
	roleAdmin = "Admin"
	roleUser  = "User"
)

const userColumns = `id, username, first_name, last_name, email, role, is_active, email_verified,
	created_at, updated_at, password_hash, token_version`

// qualifiedUserColumns are userColumns of a users table aliased u, for joins.
const qualifiedUserColumns = `u.id, u.username, u.first_name, u.last_name, u.email, u.role, u.is_active,
	u.email_verified, u.created_at, u.updated_at, u.password_hash, u.token_version`

// openStore connects to PostgreSQL and applies the schema, retrying while the database is
// still starting (for up to wait).
func openStore(ctx context.Context, databaseURL string, keys keySet, now func() time.Time, wait time.Duration) (*store, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	// Requests are short and CPU-bound on the server side: a few connections per core keep
	// PostgreSQL busy without queueing inside it.
	cfg.MaxConns = int32(max(4, 2*runtime.NumCPU()))
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	s := &store{pool: pool, now: now, sealer: newSealer(keys)}
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
	if err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

func (s *store) close() { s.pool.Close() }

// applySchema runs schema.sql under an advisory lock so that instances starting together do
// not race each other's CREATE statements. A database already at this schema (its digest is
// recorded in schema_version) is left untouched: DDL such as ALTER TABLE takes locks that
// would stall, or deadlock with, the traffic of instances already running.
func (s *store) applySchema(ctx context.Context) error {
	digest := sha256.Sum256([]byte(schemaSQL))
	version := hex.EncodeToString(digest[:])
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
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
		return err
	})
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

// createUser registers a user with the User role and queues the mail that verifies their
// address. A taken username or email is errConflict.
func (s *store) createUser(ctx context.Context, u newUser, passwordHash string, verifyTTL time.Duration) (int64, error) {
	var id int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		if id, err = insertUser(ctx, tx, u, passwordHash, roleUser, false); err != nil {
			return err
		}
		// An address that was sent its share of mail lately gets no more: registering with it
		// must not be a way round the cap. The user can ask for the mail again later.
		created := user{ID: id, Username: u.Username, FirstName: u.FirstName, Email: u.Email}
		err = s.checkAddressCap(ctx, tx, created)
		if errors.Is(err, errMailCapped) {
			err = s.audit(ctx, tx, auditMailNotSent, 0, id, map[string]any{"for": auditVerificationRequested})
		} else if err == nil {
			err = s.queueVerification(ctx, tx, created, verifyTTL)
		}
		if err != nil {
			return err
		}
		return s.audit(ctx, tx, auditRegister, id, id, nil)
	})
	return id, s.takenFields(ctx, err, 0, &u.Username, &u.Email)
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

// createFirstAdmin creates an admin unless one exists already (errConflict). The advisory lock
// keeps two concurrent runs from both succeeding.
func (s *store) createFirstAdmin(ctx context.Context, u newUser, passwordHash string) (int64, error) {
	var id int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(adminLockKey)); err != nil {
			return err
		}
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM users WHERE role = 'Admin')").Scan(&exists); err != nil {
			return err
		}
		if exists {
			return fail(errConflict, "An admin already exists; manage users through the API")
		}
		var err error
		// The first admin's address is taken on trust: whoever runs this owns the server.
		if id, err = insertUser(ctx, tx, u, passwordHash, roleAdmin, true); err != nil {
			return err
		}
		return s.audit(ctx, tx, auditAdminCreated, 0, id, map[string]any{"username": u.Username})
	})
	return id, s.takenFields(ctx, err, 0, &u.Username, &u.Email)
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
	// Scanning into fields by hand, rather than by reflection, keeps the per-request
	// authentication query cheap.
	err := row.Scan(append([]any{&u.ID, &u.Username, &u.FirstName, &u.LastName, &u.Email, &u.Role, &u.IsActive,
		&u.EmailVerified, &u.CreatedAt, &u.UpdatedAt, &u.PasswordHash, &u.TokenVersion}, extra...)...)
	if errors.Is(err, pgx.ErrNoRows) {
		return errNotFound
	}
	if err != nil {
		return fmt.Errorf("query user: %w", err)
	}
	u.CreatedAt, u.UpdatedAt = u.CreatedAt.UTC(), u.UpdatedAt.UTC()
	return nil
}

// userPatch is a partial update; nil fields are left alone.
type userPatch struct {
	Username      *string `json:"username"`
	FirstName     *string `json:"first_name"`
	LastName      *string `json:"last_name"`
	Email         *string `json:"email"`
	Role          *string `json:"role"`
	IsActive      *bool   `json:"is_active"`
	EmailVerified *bool   `json:"email_verified"`
}

// updateUser applies a patch to user id on behalf of actor, enforcing authorizeUpdate inside
// the transaction. A change of role or active state bumps the token version and revokes every
// session, which ends every access and refresh token the user holds.
func (s *store) updateUser(ctx context.Context, actor user, id int64, p userPatch, verifyTTL time.Duration) (user, error) {
	var updated user
	err := s.adminChange(ctx, actor, id, func(tx pgx.Tx, target user) error {
		if err := authorizeUpdate(actor, target, p); err != nil {
			return err
		}
		if removesAdmin(target, p) {
			if err := ensureAnotherAdmin(ctx, tx, target.ID); err != nil {
				return err
			}
		}
		// One decision, in Go, of whether the address changes (foldCase), for the cap, the
		// verified mark, the mail and the reset token alike: were the SQL to decide one of
		// them by another rule, a look-alike address could keep the mark and skip the mail.
		newAddress := p.Email != nil && !sameFold(*p.Email, target.Email)
		if actor.ID == target.ID && newAddress {
			if err := s.checkEmailChangeCap(ctx, tx, target.ID, *p.Email); err != nil {
				return err
			}
		}
		var err error
		updated, err = queryUser(ctx, tx, `UPDATE users SET
				username = COALESCE($2, username),
				first_name = COALESCE($3, first_name),
				last_name = COALESCE($4, last_name),
				email = COALESCE($5, email),
				role = COALESCE($6, role),
				is_active = COALESCE($7, is_active),
				-- a new address is unverified unless an admin says otherwise in the same update
				email_verified = COALESCE($8, email_verified AND NOT $9),
				token_version = token_version +
					CASE WHEN COALESCE($6, role) <> role OR COALESCE($7, is_active) <> is_active THEN 1 ELSE 0 END,
				updated_at = now()
			WHERE id = $1 RETURNING `+userColumns,
			id, p.Username, p.FirstName, p.LastName, p.Email, p.Role, p.IsActive, p.EmailVerified, newAddress)
		if err != nil {
			return uniqueViolation(err)
		}
		if err := s.mailEmailChange(ctx, tx, target, updated, verifyTTL); err != nil {
			return err
		}
		if err := s.voidCredentials(ctx, tx, target, updated); err != nil {
			return err
		}
		return s.auditUpdate(ctx, tx, actor, target, updated)
	})
	return updated, s.takenFields(ctx, err, id, p.Username, p.Email)
}

// voidCredentials ends what an update made stale: the sessions of a user whose role or active
// state changed, and the pending reset token of one who was deactivated or given a new email
// address (a link mailed to the old address, perhaps a lost mailbox, must not work).
func (s *store) voidCredentials(ctx context.Context, tx pgx.Tx, before, after user) error {
	if before.Role != after.Role || before.IsActive != after.IsActive {
		if err := s.revokeSessions(ctx, tx, after.ID); err != nil {
			return err
		}
	}
	if !sameFold(before.Email, after.Email) || !after.IsActive {
		if _, err := tx.Exec(ctx, "DELETE FROM password_reset_tokens WHERE user_id = $1", after.ID); err != nil {
			return err
		}
	}
	return nil
}

// auditUpdate records what an update changed.
func (s *store) auditUpdate(ctx context.Context, tx pgx.Tx, actor, before, after user) error {
	var fields []string
	for _, f := range []struct {
		name          string
		before, after string
	}{
		{"username", before.Username, after.Username},
		{"first_name", before.FirstName, after.FirstName},
		{"last_name", before.LastName, after.LastName},
		{"email", before.Email, after.Email},
		{"email_verified", strconv.FormatBool(before.EmailVerified), strconv.FormatBool(after.EmailVerified)},
	} {
		if f.before != f.after {
			fields = append(fields, f.name)
		}
	}
	if len(fields) > 0 {
		if err := s.audit(ctx, tx, auditProfileUpdated, actor.ID, after.ID, map[string]any{"fields": fields}); err != nil {
			return err
		}
	}
	if before.Role != after.Role {
		if err := s.audit(ctx, tx, auditRoleChanged, actor.ID, after.ID, map[string]any{"from": before.Role, "to": after.Role}); err != nil {
			return err
		}
	}
	if before.IsActive != after.IsActive {
		return s.audit(ctx, tx, auditActivationChanged, actor.ID, after.ID, map[string]any{"is_active": after.IsActive})
	}
	return nil
}

// deleteUser deletes user id on behalf of actor, enforcing authorizeDelete.
func (s *store) deleteUser(ctx context.Context, actor user, id int64) error {
	return s.adminChange(ctx, actor, id, func(tx pgx.Tx, target user) error {
		if err := authorizeDelete(actor, target); err != nil {
			return err
		}
		if target.Role == roleAdmin {
			if err := ensureAnotherAdmin(ctx, tx, target.ID); err != nil {
				return err
			}
		}
		// The sessions are locked before the cascade deletes them and then their refresh
		// tokens: a refresh locks a session before its token too, so the two never deadlock.
		if _, err := tx.Exec(ctx, "SELECT FROM sessions WHERE user_id = $1 FOR UPDATE", id); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "DELETE FROM users WHERE id = $1", id); err != nil {
			return err
		}
		return s.audit(ctx, tx, auditUserDeleted, actor.ID, id, map[string]any{"username": target.Username})
	})
}

// adminChange runs change in a transaction with the target row locked. When the actor is an
// admin it first takes the admin lock, so that two admins demoting or deleting themselves at
// once cannot both succeed and leave no admin.
func (s *store) adminChange(ctx context.Context, actor user, id int64, change func(pgx.Tx, user) error) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if actor.Role == roleAdmin {
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(adminLockKey)); err != nil {
				return err
			}
		}
		target, err := queryUser(ctx, tx, "SELECT "+userColumns+" FROM users WHERE id = $1 FOR UPDATE", id)
		if err != nil {
			return err
		}
		return change(tx, target)
	})
}

// ensureAnotherAdmin returns errConflict unless an active admin other than id exists.
func ensureAnotherAdmin(ctx context.Context, tx pgx.Tx, id int64) error {
	var others bool
	err := tx.QueryRow(ctx, `SELECT EXISTS (
		SELECT 1 FROM users WHERE role = 'Admin' AND is_active AND id <> $1)`, id).Scan(&others)
	if err != nil {
		return err
	}
	if !others {
		return fail(errConflict, "The last active admin cannot be removed, demoted or deactivated")
	}
	return nil
}

// userFilter selects and orders a page of the admin user list.
type userFilter struct {
	Query    string
	Role     string
	IsActive *bool
	Sort     string // a key of sortColumns, with an optional "-" prefix for descending
	page
}

// Username and email sort by their folded form (foldCase), which the unique indexes hold in order.
var sortColumns = map[string]string{"id": "id", "username": `lower(username COLLATE "C")`, "email": `lower(email COLLATE "C")`,
	"created_at": "created_at"}

// listUsers returns one page of users matching f and the number of users matching in all.
func (s *store) listUsers(ctx context.Context, f userFilter) ([]user, int, error) {
	where, args := f.where()
	order, desc := strings.CutPrefix(f.Sort, "-")
	direction := ""
	if desc {
		direction = " DESC"
	}
	// The sort column comes from a fixed map, never from the request text itself.
	orderBy := " ORDER BY " + sortColumns[order] + direction + ", id" + direction
	// A deferred join: the page's ids are found first, from an index and without reading the
	// rows skipped by OFFSET (for the default order an index-only scan of the primary key),
	// then only the page's rows are read whole. Plain OFFSET reads every skipped row whole.
	pageSQL := "SELECT " + listColumns + " FROM users JOIN (SELECT id FROM users" + where + orderBy +
		f.limitOffset() + ") AS page USING (id)" + orderBy
	// QueryExecModeExec plans each query with its arguments: a cached generic plan of a search
	// cannot use the trigram index and scans every user instead.
	rows, _ := s.pool.Query(ctx, pageSQL, append([]any{pgx.QueryExecModeExec}, args...)...)
	users, err := pgx.CollectRows(rows, pgx.RowToStructByNameLax[user])
	if err != nil {
		return nil, 0, fmt.Errorf("list users: %w", err)
	}
	for i := range users {
		users[i].CreatedAt, users[i].UpdatedAt = users[i].CreatedAt.UTC(), users[i].UpdatedAt.UTC()
	}
	var total int
	countSQL := "SELECT count(*) FROM users" + where
	if err := s.pool.QueryRow(ctx, countSQL, append([]any{pgx.QueryExecModeExec}, args...)...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count users: %w", err)
	}
	return users, total, nil
}

// listColumns are the columns a user list shows: no hash or token version.
const listColumns = "id, username, first_name, last_name, email, role, is_active, email_verified, created_at, updated_at"

// where builds the WHERE clause of a user list. Only the present filters appear, so PostgreSQL
// plans each shape on its own (a trigram index scan for a search, the primary key otherwise);
// each parameter is typed explicitly, never left for PostgreSQL to infer.
func (f userFilter) where() (string, []any) {
	var conds []string
	var args []any
	if f.Query != "" {
		args = append(args, "%"+escapeLike(f.Query)+"%")
		conds = append(conds, "(username ILIKE $1::text OR email ILIKE $1::text OR first_name ILIKE $1::text OR last_name ILIKE $1::text)")
	}
	if f.Role != "" {
		args = append(args, f.Role)
		conds = append(conds, fmt.Sprintf("role = $%d::text", len(args)))
	}
	if f.IsActive != nil {
		args = append(args, *f.IsActive)
		conds = append(conds, fmt.Sprintf("is_active = $%d::boolean", len(args)))
	}
	if len(conds) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

// escapeLike makes a search text match literally inside a LIKE pattern.
func escapeLike(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
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
// mail sent or given up more than 30 days ago. The audit log is history and stays.
func (s *store) deleteExpired(ctx context.Context) error {
	now := s.now()
	for _, sql := range []string{
		"DELETE FROM rate_limits WHERE updated_at < $1 - interval '1 hour'",
		"DELETE FROM login_failures WHERE updated_at < $1 - interval '1 day' AND (locked_until IS NULL OR locked_until < $1)",
		"DELETE FROM password_reset_tokens WHERE expires_at < $1",
		"DELETE FROM email_verification_tokens WHERE expires_at < $1",
		"DELETE FROM mail_outbox WHERE COALESCE(sent_at, failed_at) < $1 - interval '30 days'",
		"DELETE FROM sessions WHERE COALESCE(revoked_at, expires_at) < $1 - interval '1 day'",
		"DELETE FROM refresh_tokens WHERE expires_at < $1",
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
