package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
		hash, err := pw.hash(r.Context(), req.Password)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		id, err := st.createUser(r.Context(), newUser{req.Username, req.FirstName, req.LastName, req.Email}, hash, cfg.verifyTTL)
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
	if len(r.Username) > 254 {
		problems["username"] = "must be at most 254 characters"
	}
	check(problems, "username", textProblem(r.Username))
	if r.Password == "" {
		problems["password"] = "is required"
	}
	return problems
}

var errBadCredentials = fail(errUnauthorized, "Invalid credentials")

type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int    `json:"expires_in"`
	RefreshToken string `json:"refresh_token"`
}

func newTokenResponse(cfg config, st *store, u user, sessionID int64, refreshToken string) tokenResponse {
	return tokenResponse{
		AccessToken:  signToken(cfg.keys, u.ID, u.TokenVersion, sessionID, st.now(), cfg.accessTTL),
		TokenType:    "Bearer",
		ExpiresIn:    int(cfg.accessTTL.Seconds()),
		RefreshToken: refreshToken,
	}
}

func handleLogin(cfg config, st *store, pw *hasher, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, err := decode[loginRequest](w, r)
		if err == nil {
			err = invalidFields(req.valid())
		}
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		resp, err := login(r.Context(), cfg, st, pw, req)
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		writeJSON(w, http.StatusOK, resp)
	})
}

// accountKey names a known account in the lockout, whether it was named by username or email.
func accountKey(userID int64) string { return "user:" + strconv.FormatInt(userID, 10) }

// login checks the lockout and the credentials, then opens a session. Every failure looks the
// same to the client.
func login(ctx context.Context, cfg config, st *store, pw *hasher, req loginRequest) (tokenResponse, error) {
	u, err := st.userByLogin(ctx, req.Username)
	if err != nil && !errors.Is(err, errNotFound) {
		return tokenResponse{}, err
	}
	known := err == nil
	// The lockout counts per account, whether it is named by username or by email, so the
	// two do not give an attacker two sets of guesses.
	key := "login:" + strings.ToLower(req.Username)
	if known {
		key = accountKey(u.ID)
	}
	// An unknown user still costs one bcrypt comparison, so response times do not tell
	// which usernames exist.
	hash := u.PasswordHash
	if !known {
		hash = pw.dummy()
	}
	// The attempt is counted as a failure once it has a bcrypt slot, before the password is
	// checked, so that attempts made in parallel cannot all be checked before the first
	// failure is recorded. bcrypt reads only 72 bytes; a longer password (registration
	// refuses them) never matches.
	matches, err := pw.matches(ctx, hash, req.Password, func() error {
		return st.reserveLoginAttempt(ctx, key, cfg.loginMaxFailures)
	})
	if err != nil {
		return tokenResponse{}, err
	}
	if !matches || !known || !u.IsActive || len(req.Password) > 72 {
		if err := st.auditFailure(ctx, auditLoginFailed, 0, u.ID); err != nil { // u.ID: 0 when unknown
			return tokenResponse{}, err
		}
		return tokenResponse{}, errBadCredentials
	}
	// Told only to someone who knows the password, so it reveals nothing about who exists.
	// The right password is no failure: it must not count towards a lockout.
	if cfg.requireVerifiedEmail && !u.EmailVerified {
		if err := forgetLoginFailures(ctx, st.pool, key); err != nil {
			return tokenResponse{}, err
		}
		return tokenResponse{}, fail(errForbidden, "Email address not verified")
	}
	// A hash made at another cost (BCRYPT_COST changed since) is replaced while the password
	// is at hand.
	var rehash string
	if cost, err := bcrypt.Cost([]byte(hash)); err == nil && cost != cfg.bcryptCost {
		if rehash, err = pw.hash(ctx, req.Password); err != nil {
			return tokenResponse{}, err
		}
	}
	sessionID, refreshToken, err := st.startSession(ctx, u, key, rehash, min(cfg.refreshTTL, cfg.sessionLifetime))
	if err != nil {
		return tokenResponse{}, err
	}
	return newTokenResponse(cfg, st, u, sessionID, refreshToken), nil
}

type resetRequest struct {
	Email string `json:"email"`
}

const resetRequestReply = "If an account with that email exists, a password reset email has been sent."

func handlePasswordResetRequest(cfg config, st *store, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, err := decode[resetRequest](w, r)
		if err == nil {
			err = invalidFields(check(map[string]string{}, "email", emailProblem(req.Email)))
		}
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		token, err := st.createResetToken(r.Context(), req.Email, cfg.resetTTL)
		if errors.Is(err, errNotFound) || errors.Is(err, errMailCapped) {
			// The same reply whether or not the account exists or was capped: no user enumeration.
			writeJSON(w, http.StatusOK, message{resetRequestReply})
			return
		}
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		// The mail is queued with the token; the reply never waits for (or reveals by its
		// timing) a mail server. Only the dummy backend, for testing, returns the token.
		if cfg.mail.backend != mailDummy {
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
				return pw.hash(r.Context(), req.NewPassword)
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
		me, sessionID := currentUser(r.Context()), currentSession(r.Context())
		req, err := decode[changePasswordRequest](w, r)
		if err == nil {
			err = invalidFields(req.valid(cfg.passwordMinLength))
		}
		// Checking the current password is a login in all but name: it shares the login's
		// lockout, so that a stolen access token cannot be used to guess the password.
		var matches bool
		if err == nil {
			matches, err = pw.matches(r.Context(), me.PasswordHash, req.CurrentPassword, func() error {
				return st.reserveLoginAttempt(r.Context(), accountKey(me.ID), cfg.loginMaxFailures)
			})
		}
		if err == nil && !matches {
			if err = st.auditFailure(r.Context(), auditPasswordChangeFailed, me.ID, me.ID); err == nil {
				err = fail(errInvalid, "Current password is incorrect")
			}
		}
		if err == nil {
			err = forgetLoginFailures(r.Context(), st.pool, accountKey(me.ID))
		}
		var hash string
		if err == nil {
			hash, err = pw.hash(r.Context(), req.NewPassword)
		}
		var version int64
		var refreshToken string
		if err == nil {
			version, refreshToken, err = st.changePassword(r.Context(), me, hash, sessionID)
		}
		if err != nil {
			writeError(w, r, logger, err)
			return
		}
		writeJSON(w, http.StatusOK, struct {
			Message      string `json:"message"`
			AccessToken  string `json:"access_token"`
			RefreshToken string `json:"refresh_token"`
		}{"Password changed successfully", signToken(cfg.keys, me.ID, version, sessionID, st.now(), cfg.accessTTL), refreshToken})
	})
}

type principalKey struct{}

// principal is who an authenticated request acts as: the user and the session of its token.
type principal struct {
	user      user
	sessionID int64
}

// currentUser returns the user requireAuth authenticated.
func currentUser(ctx context.Context) user {
	p, _ := ctx.Value(principalKey{}).(principal)
	return p.user
}

// currentSession returns the session of the request's access token.
func currentSession(ctx context.Context) int64 {
	p, _ := ctx.Value(principalKey{}).(principal)
	return p.sessionID
}

// requireAuth admits a request only with a valid, unexpired, unrevoked bearer token of an
// active user; it loads that user in one query and stores it in the context.
func requireAuth(cfg config, st *store, logger *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p, err := authenticate(r, cfg, st)
			if err != nil {
				writeError(w, r, logger, err)
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
		})
	}
}

var errRevokedToken = fail(errUnauthorized, "Invalid or revoked token")

func authenticate(r *http.Request, cfg config, st *store) (principal, error) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return principal{}, fail(errUnauthorized, "Missing or invalid Authorization header")
	}
	claims, err := verifyToken(cfg.keys, token, st.now())
	if errors.Is(err, errTokenExpired) {
		return principal{}, fail(errUnauthorized, "Token has expired")
	}
	if err != nil {
		return principal{}, errRevokedToken
	}
	id, err := claims.userID()
	if err != nil {
		return principal{}, errRevokedToken
	}
	u, sessionLive, err := st.sessionUser(r.Context(), id, claims.Session, cfg.sessionLifetime)
	if errors.Is(err, errNotFound) {
		return principal{}, errRevokedToken
	}
	if err != nil {
		return principal{}, err
	}
	// These checks are what make logout, password changes, resets, deactivation and role
	// changes end tokens at the next request, on every instance.
	if !u.IsActive || !sessionLive || u.TokenVersion != claims.Version {
		return principal{}, errRevokedToken
	}
	return principal{user: u, sessionID: claims.Session}, nil
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

// hasher hashes and checks passwords with bcrypt at the configured cost. At most
// BCRYPT_CONCURRENCY run at once, so that a flood of logins queues here instead of starving
// every other request of CPU.
type hasher struct {
	cost     int
	slots    chan struct{}
	dummy    func() string
	compared atomic.Int64 // passwords checked since start: what the lockout tests count
}

// bcryptWait is how long a request waits for a bcrypt slot before it gets a 503.
const bcryptWait = 2 * time.Second

func newHasher(cost, concurrency int) *hasher {
	h := &hasher{cost: cost, slots: make(chan struct{}, concurrency)}
	// Made on first use rather than at start, so that starting stays fast.
	h.dummy = sync.OnceValue(func() string {
		hash, _ := bcrypt.GenerateFromPassword([]byte(randomToken()), cost)
		return string(hash)
	})
	return h
}

func (h *hasher) hash(ctx context.Context, password string) (string, error) {
	var hash []byte
	err := h.withSlot(ctx, nil, func() (err error) {
		hash, err = bcrypt.GenerateFromPassword([]byte(password), h.cost)
		return err
	})
	return string(hash), err
}

// matches compares password with hash. admit runs once a bcrypt slot is held, just before the
// comparison, and its error ends the call: a login attempt is counted there, so that an attempt
// turned away as busy (503) never counts towards a lockout.
func (h *hasher) matches(ctx context.Context, hash, password string, admit func() error) (bool, error) {
	var ok bool
	err := h.withSlot(ctx, admit, func() error {
		h.compared.Add(1)
		ok = bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)) == nil
		return nil
	})
	return ok, err
}

// withSlot runs work in the background once a bcrypt slot is free, and admit (when set) just
// before it, on the calling goroutine.
func (h *hasher) withSlot(ctx context.Context, admit, work func() error) error {
	timer := time.NewTimer(bcryptWait)
	defer timer.Stop()
	select {
	case h.slots <- struct{}{}:
	case <-timer.C:
		return fail(errBusy, "Server busy, try again shortly")
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-h.slots }()
	if admit != nil {
		if err := admit(); err != nil {
			return err
		}
	}
	return inBackground(work)
}

// inBackground runs work on an OS thread of its own at the lowest CPU priority and waits for
// it. The kernel then gives the CPU to every other thread first (request handlers, PostgreSQL)
// and to bcrypt only what they leave: a flood of logins uses the idle CPU without slowing the
// other requests. The goroutine ends still locked to its thread, so the thread, with its
// lowered priority, is discarded rather than reused. (run raises GOMAXPROCS by the number of
// bcrypt slots, so these threads never hold every P.)
func inBackground(work func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		lowerThreadPriority()
		done <- work()
	}()
	return <-done
}
