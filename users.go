package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// Profiles and the admin user list: me, get, update, delete, the permission rules they enforce,
// and their SQL.

func handleMe() apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		writeJSON(w, http.StatusOK, currentUser(r.Context()))
		return nil
	}
}

func handleGetUser(st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := targetID(r)
		if err != nil {
			return err
		}
		u := currentUser(r.Context()) // read already, by requireAuth
		if id != u.ID {
			if u, err = st.userByID(r.Context(), id); err != nil {
				return userNotFound(err)
			}
		}
		writeJSON(w, http.StatusOK, u)
		return nil
	}
}

func (p userPatch) valid() map[string]string {
	problems := map[string]string{}
	if p.Username != nil {
		check(problems, "username", usernameProblem(*p.Username))
	}
	if p.FirstName != nil {
		check(problems, "first_name", nameProblem(*p.FirstName))
	}
	if p.LastName != nil {
		check(problems, "last_name", nameProblem(*p.LastName))
	}
	if p.Email != nil {
		check(problems, "email", emailProblem(*p.Email))
	}
	if p.Role != nil {
		if _, ok := parseRole(*p.Role); !ok {
			problems["role"] = "must be Admin or User"
		}
	}
	for name, m := range map[string]*json.RawMessage{"user_metadata": p.UserMetadata, "app_metadata": p.AppMetadata} {
		if m != nil {
			_, problem := normalizeMetadata(*m)
			check(problems, name, problem)
		}
	}
	if p == (userPatch{}) && len(problems) == 0 {
		problems["body"] = "must set at least one field"
	}
	return problems
}

// parseRole accepts a role name in any case and returns its canonical spelling.
// canonical is a valid p as it is stored: the role spelled "Admin" or "User" whatever its case,
// metadata as compact JSON in which PostgreSQL can hold every value.
func (p userPatch) canonical() userPatch {
	if p.Role != nil {
		role, _ := parseRole(*p.Role)
		p.Role = &role
	}
	for _, m := range []**json.RawMessage{&p.UserMetadata, &p.AppMetadata} {
		if *m != nil {
			normalized, _ := normalizeMetadata(**m)
			*m = &normalized
		}
	}
	return p
}

func parseRole(s string) (string, bool) {
	switch strings.ToLower(s) {
	case "admin":
		return roleAdmin, true
	case "user":
		return roleUser, true
	}
	return s, false
}

func handleUpdateUser(st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := targetID(r)
		if err != nil {
			return err
		}
		patch, err := decodeValid[userPatch](w, r)
		if err != nil {
			return err
		}
		u, err := st.updateUser(r.Context(), currentUser(r.Context()), id, patch.canonical())
		if err != nil {
			return userNotFound(err)
		}
		writeJSON(w, http.StatusOK, u)
		return nil
	}
}

func handleDeleteUser(st *store) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := targetID(r)
		if err != nil {
			return err
		}
		if err := st.deleteUser(r.Context(), currentUser(r.Context()), id); err != nil {
			return userNotFound(err)
		}
		writeJSON(w, http.StatusOK, message{"User deleted successfully"})
		return nil
	}
}

// targetID parses the {id} of the path. A user who is not an admin may address only
// themself: any other id is 403 whether or not it exists, so ids cannot be probed. An admin
// whose session lacks the second factor ADMIN_REQUIRE_MFA asks for may not either, as on the
// admin-only routes.
func targetID(r *http.Request) (int64, error) {
	id, ok := parseID(r.PathValue("id"))
	if !ok {
		return 0, fail(errInvalid, "User id must be a positive integer")
	}
	me := currentUser(r.Context())
	switch {
	case me.Role != roleAdmin && me.ID != id:
		return 0, fail(errForbidden, "You may only access your own account")
	case me.ID != id && adminNeedsMFA(r.Context()):
		return 0, errAdminNeedsMFA
	}
	return id, nil
}

// parseID reads an id as written in paths and queries: a positive decimal integer with no sign
// or leading zero, so that each id has one spelling.
func parseID(s string) (int64, bool) {
	if s == "" || s[0] < '1' || s[0] > '9' {
		return 0, false
	}
	id, err := strconv.ParseInt(s, 10, 64)
	return id, err == nil
}

// userNotFound gives a missing user its message.
func userNotFound(err error) error {
	if errors.Is(err, errNotFound) {
		return fail(errNotFound, "User not found")
	}
	return err
}

// authorizeUpdate holds the rules for changing a user: users change only their own profile
// and never their own role or active state; admins change any non-admin and themself, never
// another admin. (Whether an admin may demote themself depends on the other admins: see
// store.updateUser.)
func authorizeUpdate(actor, target user, p userPatch) error {
	changesAccess := p.Role != nil && *p.Role != target.Role || p.IsActive != nil && *p.IsActive != target.IsActive
	switch {
	case actor.Role != roleAdmin && p.EmailVerified != nil:
		// Even "unchanged": sent with a new email, it would keep the new address verified.
		return fail(errForbidden, "Only admins can set email_verified")
	case actor.Role != roleAdmin && p.AppMetadata != nil:
		// Apps trust app_metadata (a plan, a tenant) as the admins' word: even "unchanged" is refused.
		return fail(errForbidden, "Only admins can set app_metadata")
	case actor.ID == target.ID && actor.Role != roleAdmin && changesAccess:
		return fail(errForbidden, "You cannot change your own role or active state")
	case actor.ID != target.ID && actor.Role != roleAdmin:
		return fail(errForbidden, "You may only access your own account")
	case actor.ID != target.ID && target.Role == roleAdmin:
		return fail(errForbidden, "Admins cannot modify other admins")
	}
	return nil
}

// authorizeDelete: only admins delete, and never another admin.
func authorizeDelete(actor, target user) error {
	switch {
	case actor.Role != roleAdmin:
		return fail(errForbidden, "Admin privileges required")
	case actor.ID != target.ID && target.Role == roleAdmin:
		return fail(errForbidden, "Admins cannot delete other admins")
	}
	return nil
}

// removesAdmin reports whether the patch takes an active admin out of the set of active admins.
func removesAdmin(target user, p userPatch) bool {
	return target.Role == roleAdmin && target.IsActive &&
		(p.Role != nil && *p.Role != roleAdmin || p.IsActive != nil && !*p.IsActive)
}

// parseUserFilter reads the user list's query parameters, naming every bad one.
func parseUserFilter(q url.Values) (userFilter, error) {
	f := userFilter{page: defaultPage, Sort: "id"}
	err := parseListQuery(q, &f.page, func(name, value string) string {
		switch name {
		case "q":
			f.Query = value
			if len(value) > 254 {
				return "must be at most 254 characters"
			}
			return textProblem(value)
		case "role":
			role, ok := parseRole(value)
			f.Role = role
			if !ok {
				return "must be Admin or User"
			}
		case "is_active":
			active, err := strconv.ParseBool(value)
			f.IsActive = &active
			if err != nil {
				return "must be true or false"
			}
		case "sort":
			f.Sort = value
			if _, ok := sortColumns[strings.TrimPrefix(value, "-")]; !ok {
				return "must be one of id, username, email, created_at, optionally prefixed by -"
			}
		default:
			key, ok := strings.CutPrefix(name, "app_metadata.")
			if !ok {
				return "unknown parameter"
			}
			if f.AppMetadata == nil {
				f.AppMetadata = map[string]string{}
			}
			f.AppMetadata[key] = value
			return appMetadataFilterProblem(key, value)
		}
		return ""
	})
	return f, err
}

// appMetadataFilterProblem is what is wrong with a filter app_metadata.<key>=<value>.
func appMetadataFilterProblem(key, value string) string {
	switch {
	case key == "" || utf8.RuneCountInString(key) > maxMetadataKey:
		return fmt.Sprintf("the key after app_metadata. must be 1 to %d characters", maxMetadataKey)
	case len(value) > maxMetadataBytes:
		return fmt.Sprintf("must be at most %d bytes", maxMetadataBytes)
	}
	return textProblem(key + value)
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
	// Metadata objects are replaced whole, by PATCH as by PUT.
	UserMetadata *json.RawMessage `json:"user_metadata"`
	AppMetadata  *json.RawMessage `json:"app_metadata"`
}

// updateUser applies a patch to user id on behalf of actor, enforcing authorizeUpdate inside
// the transaction. A change of role or active state bumps the token version and revokes every
// session, which ends every access and refresh token the user holds.
func (s *store) updateUser(ctx context.Context, actor user, id int64, p userPatch) (user, error) {
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
				user_metadata = COALESCE($10::jsonb, user_metadata),
				app_metadata = COALESCE($11::jsonb, app_metadata),
				updated_at = now()
			WHERE id = $1 RETURNING `+userColumns,
			id, p.Username, p.FirstName, p.LastName, p.Email, p.Role, p.IsActive, p.EmailVerified, newAddress,
			p.UserMetadata, p.AppMetadata)
		if err != nil {
			return uniqueViolation(err)
		}
		if err := storedMetadataProblems(p, updated); err != nil {
			return err
		}
		if err := s.mailEmailChange(ctx, tx, target, updated); err != nil {
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
	details := map[string]any{}
	for _, m := range []struct {
		name          string
		before, after json.RawMessage
	}{{"user_metadata", before.UserMetadata, after.UserMetadata}, {"app_metadata", before.AppMetadata, after.AppMetadata}} {
		if keys := changedKeys(m.before, m.after); len(keys) > 0 {
			fields = append(fields, m.name)
			details[m.name+"_keys"] = keys // which keys changed, never their values
		}
	}
	if len(fields) > 0 {
		details["fields"] = fields
		if err := s.audit(ctx, tx, auditProfileUpdated, actor.ID, after.ID, details); err != nil {
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
	// AppMetadata holds top-level keys of app_metadata and the string each must equal.
	AppMetadata map[string]string
	Sort        string // a key of sortColumns, with an optional "-" prefix for descending
	page
}

// Username and email sort by their folded form (foldCase), which the unique indexes hold in order.
var sortColumns = map[string]string{"id": "id", "username": `lower(username COLLATE "C")`, "email": `lower(email COLLATE "C")`,
	"created_at": "created_at"}

// listUsers returns one page of users matching f and the number of users matching in all.
func (s *store) listUsers(ctx context.Context, f userFilter) ([]user, int, error) {
	pageSQL, countSQL, args := f.queries()
	// QueryExecModeExec plans each query with its arguments: a cached generic plan of a search
	// cannot use the trigram index and scans every user instead.
	args = append([]any{pgx.QueryExecModeExec}, args...)
	var total int
	rows, _ := s.pool.Query(ctx, pageSQL, args...)
	users, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (u user, err error) {
		return u, scanUser(row, &u, &total)
	})
	if err != nil {
		return nil, 0, fmt.Errorf("list users: %w", err)
	}
	if len(users) > 0 {
		return users, total, nil
	}
	// A page past the end has no row to carry the total.
	if err := s.pool.QueryRow(ctx, countSQL, args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count users: %w", err)
	}
	return users, total, nil
}

// queries returns the SQL of f's page, each row with the number of matches, of that number
// alone, and their arguments.
func (f userFilter) queries() (pageSQL, countSQL string, args []any) {
	where, args := f.where()
	order, desc := strings.CutPrefix(f.Sort, "-")
	direction := ""
	if desc {
		direction = " DESC"
	}
	// The sort column comes from a fixed map, never from the request text itself.
	orderBy := " ORDER BY " + sortColumns[order] + direction + ", id" + direction
	// A deferred join: the page's ids are found first, from an index and without reading the
	// rows skipped by OFFSET (an index-only scan), then only the page's rows are read whole.
	// Plain OFFSET reads every skipped row whole. Each id comes with the number of matches,
	// counted by the same scan (count(*) OVER () runs before LIMIT), so that a search reads its
	// index once, not once more for the total.
	pageIDs := "SELECT id, count(*) OVER () AS total FROM users" + where + orderBy + f.limitOffset()
	countSQL = "SELECT count(*) FROM users" + where
	if where == "" && order == "id" { // every user in id order: user_id_blocks knows the way
		countSQL = "SELECT coalesce(sum(users), 0)::bigint FROM user_id_blocks"
		pageIDs = blockPageIDs(desc, f.page, countSQL)
	}
	pageSQL = "SELECT " + userColumns + ", page.total FROM users JOIN (" + pageIDs + ") AS page USING (id)" + orderBy
	return pageSQL, countSQL, args
}

// blockPageIDs selects the ids of page p of all users in id order (descending with desc), each
// with the total that countSQL reads: the block of user_id_blocks that holds the page's first
// user, found from the counts of the blocks before it, then the ids from that block on,
// skipping fewer than a block's users.
func blockPageIDs(desc bool, p page, countSQL string) string {
	offset := (p.Page - 1) * p.PerPage
	order, from := "block", "id >= (SELECT block << 10 FROM start) ORDER BY id"
	if desc {
		order, from = "block DESC", "id < (SELECT (block + 1) << 10 FROM start) ORDER BY id DESC"
	}
	return fmt.Sprintf(`WITH start AS (
			SELECT block, %[3]d - before AS skip FROM (
				SELECT block, users, sum(users) OVER (ORDER BY %[1]s) - users AS before FROM user_id_blocks) AS b
			WHERE before + users > %[3]d ORDER BY %[1]s LIMIT 1)
		SELECT id, (%[5]s) AS total FROM users WHERE %[2]s LIMIT %[4]d OFFSET (SELECT skip FROM start)`,
		order, from, offset, p.PerPage, countSQL)
}

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
	// Containment of {"key": "value"} is an exact match of a string at the top level, which
	// the GIN index users_app_metadata_idx serves.
	for _, key := range slices.Sorted(maps.Keys(f.AppMetadata)) {
		contained, _ := json.Marshal(map[string]string{key: f.AppMetadata[key]}) // strings always marshal
		args = append(args, string(contained))
		conds = append(conds, fmt.Sprintf("app_metadata @> $%d::jsonb", len(args)))
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
