package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Handlers for profiles and the admin user list, and the permission rules they enforce.

func handleMe() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, currentUser(r.Context()))
	})
}

func handleGetUser(st *store, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := targetID(r)
		var u user
		if err == nil {
			u, err = st.userByID(r.Context(), id)
		}
		if err != nil {
			writeError(w, r, logger, userNotFound(err))
			return
		}
		writeJSON(w, http.StatusOK, u)
	})
}

func (p *userPatch) valid() map[string]string {
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
		role, ok := parseRole(*p.Role)
		if !ok {
			problems["role"] = "must be Admin or User"
		}
		p.Role = &role
	}
	if *p == (userPatch{}) && len(problems) == 0 {
		problems["body"] = "must set at least one field"
	}
	return problems
}

// parseRole accepts a role name in any case and returns its canonical spelling.
func parseRole(s string) (string, bool) {
	switch strings.ToLower(s) {
	case "admin":
		return roleAdmin, true
	case "user":
		return roleUser, true
	}
	return s, false
}

func handleUpdateUser(cfg config, st *store, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := targetID(r)
		var patch userPatch
		if err == nil {
			patch, err = decode[userPatch](w, r)
		}
		if err == nil {
			err = invalidFields(patch.valid())
		}
		var u user
		if err == nil {
			u, err = st.updateUser(r.Context(), currentUser(r.Context()), id, patch, cfg.verifyTTL)
		}
		if err != nil {
			writeError(w, r, logger, userNotFound(err))
			return
		}
		writeJSON(w, http.StatusOK, u)
	})
}

func handleDeleteUser(st *store, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := targetID(r)
		if err == nil {
			err = st.deleteUser(r.Context(), currentUser(r.Context()), id)
		}
		if err != nil {
			writeError(w, r, logger, userNotFound(err))
			return
		}
		writeJSON(w, http.StatusOK, message{"User deleted successfully"})
	})
}

// targetID parses the {id} of the path. A user who is not an admin may address only
// themself: any other id is 403 whether or not it exists, so ids cannot be probed.
func targetID(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return 0, fail(errInvalid, "User id must be a positive integer")
	}
	if me := currentUser(r.Context()); me.Role != roleAdmin && me.ID != id {
		return 0, fail(errForbidden, "You may only access your own account")
	}
	return id, nil
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
	changesAccess := p.Role != nil && *p.Role != target.Role || p.IsActive != nil && *p.IsActive != target.IsActive ||
		p.EmailVerified != nil && *p.EmailVerified != target.EmailVerified
	switch {
	case actor.ID == target.ID && actor.Role != roleAdmin && changesAccess:
		return fail(errForbidden, "You cannot change your own role, active state or email verification")
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

func handleListUsers(st *store, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := parseUserFilter(r.URL.Query())
		var users []user
		var total int
		if err == nil {
			users, total, err = st.listUsers(r.Context(), f)
		}
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		writePage(w, r, f.page, total, users)
	})
}

// parseUserFilter reads the list's query parameters, naming every bad one.
func parseUserFilter(q url.Values) (userFilter, error) {
	f := userFilter{page: defaultPage, Sort: "id"}
	problems := map[string]string{}
	for name, values := range q {
		value := values[0]
		switch {
		case len(values) > 1:
			problems[name] = "must be given once"
		case f.page.parse(problems, name, value):
		case name == "q":
			f.Query = value
			if len(value) > 254 {
				problems[name] = "must be at most 254 characters"
			}
			check(problems, name, textProblem(value))
		case name == "role":
			role, ok := parseRole(value)
			f.Role = role
			if !ok {
				problems[name] = "must be Admin or User"
			}
		case name == "is_active":
			active, err := strconv.ParseBool(value)
			f.IsActive = &active
			if err != nil {
				problems[name] = "must be true or false"
			}
		case name == "sort":
			f.Sort = value
			if _, ok := sortColumns[strings.TrimPrefix(value, "-")]; !ok {
				problems[name] = "must be one of id, username, email, created_at, optionally prefixed by -"
			}
		default:
			problems[name] = "unknown parameter"
		}
	}
	return f, invalidFields(problems)
}

// page is the pagination of a list: page (from 1) and per_page (1 to 200, default 50).
type page struct {
	Page    int
	PerPage int
}

var defaultPage = page{Page: 1, PerPage: 50}

const maxPerPage = 200

// parse takes the query parameter name if it is page or per_page, recording a bad value in
// problems, and reports whether it was one of them.
func (p *page) parse(problems map[string]string, name, value string) bool {
	var target *int
	low, high := 1, 1<<31-1
	switch name {
	case "page":
		target = &p.Page
	case "per_page":
		target, high = &p.PerPage, maxPerPage
	default:
		return false
	}
	n, err := strconv.Atoi(value)
	if err != nil || n < low || n > high {
		problems[name] = fmt.Sprintf("must be an integer from %d to %d", low, high)
	}
	*target = n
	return true
}

// limitOffset is the page's SQL LIMIT and OFFSET (numbers checked by parse).
func (p page) limitOffset() string {
	return fmt.Sprintf(" LIMIT %d OFFSET %d", p.PerPage, (p.Page-1)*p.PerPage)
}

// writePage replies with one page of items, the total count in X-Total-Count and an RFC 8288
// Link header with the first, prev, next and last pages.
func writePage(w http.ResponseWriter, r *http.Request, p page, total int, items any) {
	last := max(1, (total+p.PerPage-1)/p.PerPage)
	link := func(n int, rel string) string {
		q := r.URL.Query()
		q.Set("page", strconv.Itoa(n))
		q.Set("per_page", strconv.Itoa(p.PerPage))
		return fmt.Sprintf(`<%s?%s>; rel="%s"`, r.URL.Path, q.Encode(), rel)
	}
	links := []string{link(1, "first")}
	if p.Page > 1 {
		links = append(links, link(min(p.Page-1, last), "prev"))
	}
	if p.Page < last {
		links = append(links, link(p.Page+1, "next"))
	}
	w.Header().Set("X-Total-Count", strconv.Itoa(total))
	w.Header().Set("Link", strings.Join(append(links, link(last, "last")), ", "))
	writeJSON(w, http.StatusOK, items)
}
