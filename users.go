package main

import (
	"errors"
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
		u := currentUser(r.Context()) // read already, by requireAuth
		if err == nil && id != u.ID {
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
	id, ok := parseID(r.PathValue("id"))
	if !ok {
		return 0, fail(errInvalid, "User id must be a positive integer")
	}
	if me := currentUser(r.Context()); me.Role != roleAdmin && me.ID != id {
		return 0, fail(errForbidden, "You may only access your own account")
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
			return "unknown parameter"
		}
		return ""
	})
	return f, err
}
