package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"

	"golang.org/x/crypto/bcrypt"
)

// Handlers for registration, login and passwords, and the middleware that authenticates
// requests.

type registerRequest struct {
	Username  string `json:"username"`
	FirstName string `json:"first_name"`
	LastName  string `json:"last_name"`
	Email     string `json:"email"`
	Password  string `json:"password"`
}

func (r registerRequest) valid(passwordMinLength int) map[string]string {
	problems := map[string]string{}
	check(problems, "username", usernameProblem(r.Username))
	check(problems, "first_name", nameProblem(r.FirstName))
	check(problems, "last_name", nameProblem(r.LastName))
	check(problems, "email", emailProblem(r.Email))
	check(problems, "password", passwordProblem(r.Password, passwordMinLength))
	return problems
}

func handleRegister(cfg config, st *store, pw *hasher, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, err := decode[registerRequest](w, r)
		if err == nil {
			err = invalidFields(req.valid(cfg.passwordMinLength))
		}
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		hash, err := pw.hash(req.Password)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		id, err := st.createUser(r.Context(), newUser{req.Username, req.FirstName, req.LastName, req.Email}, hash, roleUser)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		writeJSON(w, http.StatusCreated, struct {
			Message string `json:"message"`
			ID      int64  `json:"id"`
		}{"Register Successfully", id})
	})
}

type loginRequest struct {
	Username string `json:"username"` // a username or an email address
	Password string `json:"password"`
}

func (r loginRequest) valid() map[string]string {
	problems := map[string]string{}
	if r.Username == "" {
		problems["username"] = "is required"
	}
	if r.Password == "" {
		problems["password"] = "is required"
	}
	return problems
}

type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int    `json:"expires_in"`
}

func handleLogin(cfg config, st *store, pw *hasher, logger *slog.Logger) http.Handler {
	invalid := fail(errUnauthorized, "Invalid credentials")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, err := decode[loginRequest](w, r)
		if err == nil {
			err = invalidFields(req.valid())
		}
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		u, err := st.userByLogin(r.Context(), req.Username)
		if err != nil && !errors.Is(err, errNotFound) {
			writeError(w, r, logger, err)
			return
		}
		// An unknown user still costs one bcrypt comparison, so response times do not tell
		// which usernames exist.
		hash := u.PasswordHash
		if err != nil {
			hash = pw.dummy()
		}
		if !pw.matches(hash, req.Password) || err != nil || !u.IsActive {
			writeError(w, r, logger, invalid)
			return
		}
		writeJSON(w, http.StatusOK, tokenResponse{
			AccessToken: signToken(cfg.jwtSecret, u.ID, u.TokenVersion, st.now(), cfg.accessTTL),
			TokenType:   "Bearer",
			ExpiresIn:   int(cfg.accessTTL.Seconds()),
		})
	})
}

type resetRequest struct {
	Email string `json:"email"`
}

const resetRequestReply = "If an account with that email exists, a password reset email has been sent."

func handlePasswordResetRequest(cfg config, st *store, mail *mailer, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, err := decode[resetRequest](w, r)
		if err == nil {
			err = invalidFields(check(map[string]string{}, "email", emailProblem(req.Email)))
		}
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		token, u, err := st.createResetToken(r.Context(), req.Email, cfg.resetTTL)
		if errors.Is(err, errNotFound) {
			// The same reply whether or not the account exists: no user enumeration.
			writeJSON(w, http.StatusOK, message{resetRequestReply})
			return
		}
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		mail.sendAsync(resetMail(cfg, u, token))
		if !mail.revealsTokens() {
			writeJSON(w, http.StatusOK, message{resetRequestReply})
			return
		}
		writeJSON(w, http.StatusOK, struct {
			Message string `json:"message"`
			Token   string `json:"token"`
		}{resetRequestReply, token})
	})
}

type newPasswordRequest struct {
	NewPassword string `json:"new_password"`
}

func handleResetPassword(cfg config, st *store, pw *hasher, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, err := decode[newPasswordRequest](w, r)
		if err == nil {
			err = invalidFields(check(map[string]string{}, "new_password", passwordProblem(req.NewPassword, cfg.passwordMinLength)))
		}
		if err == nil {
			err = st.resetPassword(r.Context(), r.PathValue("token"), func() (string, error) {
				return pw.hash(req.NewPassword)
			})
		}
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		writeJSON(w, http.StatusOK, message{"Password reset successful"})
	})
}

type changePasswordRequest struct {
	CurrentPassword string `json:"current_password"`
	NewPassword     string `json:"new_password"`
}

func (r changePasswordRequest) valid(passwordMinLength int) map[string]string {
	problems := map[string]string{}
	if r.CurrentPassword == "" {
		problems["current_password"] = "is required"
	}
	check(problems, "new_password", passwordProblem(r.NewPassword, passwordMinLength))
	return problems
}

func handleChangePassword(cfg config, st *store, pw *hasher, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		me := currentUser(r.Context())
		req, err := decode[changePasswordRequest](w, r)
		if err == nil {
			err = invalidFields(req.valid(cfg.passwordMinLength))
		}
		if err == nil && !pw.matches(me.PasswordHash, req.CurrentPassword) {
			err = fail(errInvalid, "Current password is incorrect")
		}
		var hash string
		if err == nil {
			hash, err = pw.hash(req.NewPassword)
		}
		var version int64
		if err == nil {
			version, err = st.changePassword(r.Context(), me.ID, hash)
		}
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		writeJSON(w, http.StatusOK, struct {
			Message     string `json:"message"`
			AccessToken string `json:"access_token"`
		}{"Password changed successfully", signToken(cfg.jwtSecret, me.ID, version, st.now(), cfg.accessTTL)})
	})
}

type userKey struct{}

// currentUser returns the user requireAuth authenticated.
func currentUser(ctx context.Context) user {
	u, _ := ctx.Value(userKey{}).(user)
	return u
}

// requireAuth admits a request only with a valid, unexpired, unrevoked bearer token of an
// active user; it loads that user in one query and stores it in the context.
func requireAuth(cfg config, st *store, logger *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, err := authenticate(r, cfg, st)
			if err != nil {
				writeError(w, r, logger, err)
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), userKey{}, u)))
		})
	}
}

func authenticate(r *http.Request, cfg config, st *store) (user, error) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return user{}, fail(errUnauthorized, "Missing or invalid Authorization header")
	}
	claims, err := verifyToken(cfg.jwtSecret, token, st.now())
	if errors.Is(err, errTokenExpired) {
		return user{}, fail(errUnauthorized, "Token has expired")
	}
	revoked := fail(errUnauthorized, "Invalid or revoked token")
	if err != nil {
		return user{}, revoked
	}
	id, err := claims.userID()
	if err != nil {
		return user{}, revoked
	}
	u, err := st.userByID(r.Context(), id)
	if errors.Is(err, errNotFound) {
		return user{}, revoked
	}
	if err != nil {
		return user{}, err
	}
	// The version check is what makes password changes, resets, deactivation and role
	// changes revoke tokens at the next request, on every instance.
	if !u.IsActive || u.TokenVersion != claims.Version {
		return user{}, revoked
	}
	return u, nil
}

// requireAdmin admits only admins; it must run inside requireAuth.
func requireAdmin(logger *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if currentUser(r.Context()).Role != roleAdmin {
				writeError(w, r, logger, fail(errForbidden, "Admin privileges required"))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// hasher hashes and checks passwords with bcrypt at the configured cost.
type hasher struct {
	cost  int
	dummy func() string
}

func newHasher(cost int) *hasher {
	h := &hasher{cost: cost}
	// Made on first use rather than at start, so that starting stays fast.
	h.dummy = sync.OnceValue(func() string {
		hash, _ := h.hash(randomToken()) // 43 bytes, within bcrypt's 72
		return hash
	})
	return h
}

func (h *hasher) hash(password string) (string, error) {
	hash, err := bcrypt.GenerateFromPassword([]byte(password), h.cost)
	return string(hash), err
}

func (h *hasher) matches(hash, password string) bool {
	return bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)) == nil
}
