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

func (r registerRequest) valid(passwordMinLength int, common commonPasswords) map[string]string {
	problems := map[string]string{}
	check(problems, "username", usernameProblem(r.Username))
	check(problems, "first_name", nameProblem(r.FirstName))
	check(problems, "last_name", nameProblem(r.LastName))
	check(problems, "email", emailProblem(r.Email))
	check(problems, "password", passwordProblem(r.Password, passwordMinLength))
	checkGuessable(problems, "password", r.Password, common, r.Username, r.Email)
	return problems
}

func handleRegister(cfg config, st *store, pw *hasher, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, err := decode[registerRequest](w, r)
		if err == nil {
			err = invalidFields(req.valid(cfg.passwordMinLength, cfg.commonPasswords))
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
	key := "login:" + foldCase(req.Username)
	if known {
		key = accountKey(u.ID)
	}
	if err := pw.learnFloor(func() (int, error) { return st.strongestHashCost(ctx) }); err != nil {
		return tokenResponse{}, err
	}
	// Only an active account's hash is checked, and only against a password bcrypt reads
	// whole (72 bytes; registration refuses longer ones, whose first 72 bytes would match):
	// the rest is checked against a dummy that never matches, at the same bcrypt cost, so
	// response times do not tell which usernames exist.
	var hash, rehash string
	if known && u.IsActive && len(req.Password) <= 72 {
		hash = u.PasswordHash
		// A hash made at another cost (BCRYPT_COST changed since) is replaced while the
		// password is at hand, by a login that is to open a session.
		if cost, err := bcrypt.Cost([]byte(hash)); err == nil && cost != cfg.bcryptCost && !(cfg.requireVerifiedEmail && !u.EmailVerified) {
			rehash = req.Password
		}
	}
	// The attempt is counted as a failure once it has a bcrypt slot, before the password is
	// checked, so that attempts made in parallel cannot all be checked before the first
	// failure is recorded.
	var attempt loginAttempt
	matches, rehashed, err := pw.check(ctx, hash, req.Password, rehash, func() (err error) {
		attempt, err = st.reserveLoginAttempt(ctx, key, cfg.loginMaxFailures)
		return err
	})
	if err == nil && !matches {
		if err := st.auditFailure(ctx, auditLoginFailed, 0, u.ID); err != nil { // u.ID: 0 when unknown
			return tokenResponse{}, err
		}
		return tokenResponse{}, errBadCredentials
	}
	var resp tokenResponse
	if err == nil {
		resp, err = openSession(ctx, cfg, st, u, key, rehashed)
	}
	return resp, giveBack(ctx, st, attempt, err)
}

// openSession ends a login whose password was right: it opens a session, unless the address
// must be verified first.
func openSession(ctx context.Context, cfg config, st *store, u user, key, rehashed string) (tokenResponse, error) {
	// Told only to someone who knows the password, so it reveals nothing about who exists.
	if cfg.requireVerifiedEmail && !u.EmailVerified {
		return tokenResponse{}, fail(errForbidden, "Email address not verified")
	}
	sessionID, refreshToken, err := st.startSession(ctx, u, key, rehashed, min(cfg.refreshTTL, cfg.sessionLifetime))
	if err != nil {
		return tokenResponse{}, err
	}
	return newTokenResponse(cfg, st, u, sessionID, refreshToken), nil
}

// giveBack releases the attempt when err, which is no wrong password, ended the request that
// reserved it: only a wrong password counts towards a lockout, so that a right password that
// meets a 503 (or is told to verify its address first) cannot lock its owner out.
func giveBack(ctx context.Context, st *store, attempt loginAttempt, err error) error {
	if err == nil {
		return nil
	}
	// Released even when the client has hung up: the count must not outlive the request.
	if releaseErr := st.releaseLoginAttempt(context.WithoutCancel(ctx), attempt); releaseErr != nil {
		return errors.Join(err, releaseErr)
	}
	return err
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
			err = st.resetPassword(r.Context(), r.PathValue("token"), func(u user) (string, error) {
				problems := checkGuessable(map[string]string{}, "new_password", req.NewPassword, cfg.commonPasswords, u.Username, u.Email)
				if err := invalidFields(problems); err != nil {
					return "", err
				}
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
			err = invalidFields(checkGuessable(req.valid(cfg.passwordMinLength), "new_password", req.NewPassword, cfg.commonPasswords, me.Username, me.Email))
		}
		var version int64
		var refreshToken string
		if err == nil {
			version, refreshToken, err = changeOwnPassword(r.Context(), cfg, st, pw, me, sessionID, req)
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

// changeOwnPassword checks me's current password and sets the new one, keeping the session
// sessionID; it returns what the store's changePassword does. Checking the current password
// is a login in all but name: it shares the login's lockout, so that a stolen access token
// cannot be used to guess the password. The new password is hashed in the bcrypt slot of the
// check.
func changeOwnPassword(ctx context.Context, cfg config, st *store, pw *hasher, me user, sessionID int64, req changePasswordRequest) (int64, string, error) {
	current := me.PasswordHash
	if len(req.CurrentPassword) > 72 {
		current = "" // bcrypt reads 72 bytes: a longer password whose first 72 match is wrong
	}
	var attempt loginAttempt
	matches, hash, err := pw.check(ctx, current, req.CurrentPassword, req.NewPassword, func() (err error) {
		attempt, err = st.reserveLoginAttempt(ctx, accountKey(me.ID), cfg.loginMaxFailures)
		return err
	})
	if err == nil && !matches {
		if err := st.auditFailure(ctx, auditPasswordChangeFailed, me.ID, me.ID); err != nil {
			return 0, "", err
		}
		return 0, "", fail(errInvalid, "Current password is incorrect")
	}
	var version int64
	var refreshToken string
	if err == nil {
		version, refreshToken, err = st.changePassword(ctx, me, hash, sessionID)
	}
	return version, refreshToken, giveBack(ctx, st, attempt, err)
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
	cost    int
	slots   chan struct{}
	dummies [bcrypt.MaxCost + 1]func() string // a hash of no password, per cost
	// floor is the cost a failed check pays (see check): cost, or that of the strongest
	// stored hash once learnFloor or a check met it.
	floor      atomic.Int64
	floorKnown atomic.Bool
	compared   atomic.Int64                     // comparisons since start: what the lockout tests count
	comparedAt [bcrypt.MaxCost + 1]atomic.Int64 // comparisons per cost since start: what the timing tests count
}

// bcryptWait is how long a request waits for a bcrypt slot before it gets a 503.
const bcryptWait = 2 * time.Second

func newHasher(cost, concurrency int) *hasher {
	h := &hasher{cost: cost, slots: make(chan struct{}, concurrency)}
	h.floor.Store(int64(cost))
	// Made on first use rather than at start, so that starting stays fast.
	for c := range h.dummies {
		h.dummies[c] = sync.OnceValue(func() string {
			hash, _ := bcrypt.GenerateFromPassword([]byte(randomToken()), max(c, bcrypt.MinCost))
			return string(hash)
		})
	}
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

// check compares password with hash, holding one bcrypt slot throughout. admit runs once the
// slot is held, just before the comparison, and its error ends the call: a login attempt is
// counted there, so that an attempt turned away as busy (503) never counts towards a
// lockout. An empty hash (an unknown or deactivated user) is checked against a dummy and
// never matches. When password matches and then is set, then is hashed at the configured
// cost in the same slot and returned: a request that proved its password does not queue
// again for a slot, so it cannot be turned away as busy after its attempt was counted.
//
// Every check that fails costs the same bcrypt work, that of one comparison at the floor
// cost, so that response times do not tell unknown users, deactivated ones and wrong
// passwords apart, whatever the cost of the stored hash: a comparison against a weaker hash
// (BCRYPT_COST was raised since it was made) is padded with comparisons at its cost and each
// cost up to the floor, 2^c + 2^c + 2^(c+1) + ... + 2^(floor-1) = 2^floor rounds.
func (h *hasher) check(ctx context.Context, hash, password, then string, admit func() error) (ok bool, thenHash string, err error) {
	err = h.withSlot(ctx, admit, func() error {
		stored, err := bcrypt.Cost([]byte(hash))
		if err != nil {
			hash = "" // not a bcrypt hash: nothing matches it
		}
		floor := h.raiseFloor(stored)
		if hash == "" {
			hash, stored = h.dummies[floor](), floor
		}
		if ok = h.compare(hash, password); ok {
			if then != "" {
				var b []byte
				b, err = bcrypt.GenerateFromPassword([]byte(then), h.cost)
				thenHash = string(b)
			}
			return err
		}
		for c := stored; c < floor; c++ {
			h.compare(h.dummies[c](), password)
		}
		return nil
	})
	return ok, thenHash, err
}

// compare is one bcrypt comparison, counted.
func (h *hasher) compare(hash, password string) bool {
	cost, _ := bcrypt.Cost([]byte(hash))
	h.compared.Add(1)
	h.comparedAt[cost].Add(1)
	return bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)) == nil
}

// raiseFloor raises the floor to cost if it is lower, and returns the floor.
func (h *hasher) raiseFloor(cost int) int {
	for {
		floor := h.floor.Load()
		if int64(cost) <= floor || h.floor.CompareAndSwap(floor, int64(cost)) {
			return int(max(floor, int64(cost)))
		}
	}
}

// learnFloor raises the floor, once per process, to the cost of the strongest stored hash,
// which strongest reads. After BCRYPT_COST was lowered, checking a hash made before takes
// longer: without this, the failed logins of accounts that still have one would stand out
// until the first of them met a check.
func (h *hasher) learnFloor(strongest func() (int, error)) error {
	if h.floorKnown.Load() {
		return nil
	}
	cost, err := strongest()
	if err != nil {
		return err
	}
	h.raiseFloor(cost)
	h.floorKnown.Store(true)
	return nil
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
