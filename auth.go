package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"

	"github.com/jackc/pgx/v5"
	"golang.org/x/crypto/bcrypt"
)

// Registration, login, and the middleware that authenticates requests (requireAuth) and admits
// admins (requireAdmin): handlers and their SQL.

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

func handleRegister(cfg config, st *store, pw *hasher) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[registerRequest](w, r)
		if err != nil {
			return err
		}
		if err := invalidFields(req.valid(cfg.passwordMinLength, cfg.commonPasswords)); err != nil {
			return err
		}
		hash, err := pw.hash(r.Context(), req.Password)
		if err != nil {
			return err
		}
		id, err := st.createUser(r.Context(), newUser{req.Username, req.FirstName, req.LastName, req.Email}, hash)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, struct {
			Message string `json:"message"`
			ID      int64  `json:"id"`
		}{"Register Successfully", id})
		return nil
	}
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

var (
	errBadCredentials = fail(errUnauthorized, "Invalid credentials")
	errUnverified     = fail(errForbidden, "Email address not verified")
)

type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int    `json:"expires_in"`
	RefreshToken string `json:"refresh_token"`
}

func newTokenResponse(cfg config, st *store, u user, sessionID int64, amr []string, refreshToken string) tokenResponse {
	return tokenResponse{
		AccessToken:  signToken(cfg.keys, u.ID, u.TokenVersion, sessionID, st.now(), cfg.accessTTL, amr...),
		TokenType:    "Bearer",
		ExpiresIn:    int(cfg.accessTTL.Seconds()),
		RefreshToken: refreshToken,
	}
}

func handleLogin(cfg config, st *store, pw *hasher) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		req, err := decodeValid[loginRequest](w, r)
		if err != nil {
			return err
		}
		resp, err := login(r.Context(), cfg, st, pw, req)
		st.metrics.observeLogin(resp, err)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, resp)
		return nil
	}
}

// login checks the lockout and the credentials, then opens a session, or for a user with
// two-factor login on, replies with an mfaChallenge. Every failure looks the same to the client.
func login(ctx context.Context, cfg config, st *store, pw *hasher, req loginRequest) (any, error) {
	u, err := st.userByLogin(ctx, req.Username)
	if err != nil && !errors.Is(err, errNotFound) {
		return nil, err
	}
	known := err == nil
	// The lockout counts per account, whether it is named by username or by email, so the
	// two do not give an attacker two sets of guesses.
	key := "login:" + foldCase(req.Username)
	if known {
		key = accountKey(u.ID)
	}
	if err := pw.learnFloor(func() (int, error) { return st.strongestHashCost(ctx) }); err != nil {
		return nil, err
	}
	// Only an active account's hash is checked, and only against a password bcrypt reads
	// whole (72 bytes; registration refuses longer ones, whose first 72 bytes would match):
	// the rest is checked against a dummy that never matches, at the same bcrypt cost, so
	// response times do not tell which usernames exist.
	var hash, rehash string
	if known && u.IsActive && len(req.Password) <= 72 {
		hash = u.PasswordHash
		// A hash made at another cost (BCRYPT_COST changed since) is replaced while the
		// password is at hand, by a login that is to open a session (not a second step).
		if cost, err := bcrypt.Cost([]byte(hash)); err == nil && cost != cfg.bcryptCost && !(cfg.requireVerifiedEmail && !u.EmailVerified) && !u.MFAEnabled {
			rehash = req.Password
		}
	}
	// The attempt is counted as a failure once it has a bcrypt slot, before the password is
	// checked, so that attempts made in parallel cannot all be checked before the first
	// failure is recorded.
	var attempt loginAttempt
	matches, rehashed, err := pw.check(ctx, hash, req.Password, rehash, func() (err error) {
		attempt, err = st.reserveLoginAttempt(ctx, key)
		return err
	})
	if err == nil && !matches {
		if err := st.auditFailure(ctx, auditLoginFailed, 0, u.ID); err != nil { // u.ID: 0 when unknown
			return nil, err
		}
		return nil, errBadCredentials
	}
	// Told only to someone who knows the password, so it reveals nothing about who exists.
	if err == nil && cfg.requireVerifiedEmail && !u.EmailVerified {
		err = errUnverified
	}
	if err != nil {
		return nil, giveBack(ctx, st, attempt, err)
	}
	if u.MFAEnabled {
		// The password alone clears no failures, so that wrong codes keep counting towards the
		// lockout however often the password is typed again; its own attempt is given back.
		challenge, err := st.startMFAChallenge(ctx, u)
		return challenge, errors.Join(err, st.releaseLoginAttempt(context.WithoutCancel(ctx), attempt))
	}
	resp, err := openSession(ctx, cfg, st, u, key, rehashed, amrPassword)
	if err != nil {
		return nil, giveBack(ctx, st, attempt, err)
	}
	return resp, nil
}

// openSession starts a session for u, who proved who they are by amr, and returns the login
// reply: an access token and the session's first refresh token.
func openSession(ctx context.Context, cfg config, st *store, u user, key, rehashed string, amr []string) (tokenResponse, error) {
	sessionID, refreshToken, err := st.startSession(ctx, u, key, rehashed, amr)
	if err != nil {
		return tokenResponse{}, err
	}
	return newTokenResponse(cfg, st, u, sessionID, amr, refreshToken), nil
}

// principal is who an authenticated request acts as: the user and the session of its token,
// and how that session was authenticated.
type principal struct {
	user      user
	sessionID int64
	amr       []string
	// needsMFA: ADMIN_REQUIRE_MFA holds and the session has no second factor, so its admin
	// powers are withheld.
	needsMFA bool
}

// principalOf returns who the request acts as, as requireAuth found it; none before or
// without requireAuth.
func principalOf(ctx context.Context) principal {
	if s := stateOf(ctx); s != nil {
		return s.principal
	}
	return principal{}
}

// currentUser returns the user requireAuth authenticated.
func currentUser(ctx context.Context) user {
	return principalOf(ctx).user
}

// currentSession returns the session of the request's access token.
func currentSession(ctx context.Context) int64 {
	return principalOf(ctx).sessionID
}

var errAdminNeedsMFA = fail(errForbidden, "Admin routes require two-factor login")

// adminNeedsMFA reports whether the request's session may not use admin powers for want of a
// second factor (ADMIN_REQUIRE_MFA).
func adminNeedsMFA(ctx context.Context) bool {
	return principalOf(ctx).needsMFA
}

// currentAMR returns how the session of the request's access token was authenticated; a
// token from before sessions recorded it was a password login.
func currentAMR(ctx context.Context) []string {
	p := principalOf(ctx)
	if len(p.amr) == 0 {
		return amrPassword
	}
	return p.amr
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
			stateOf(r.Context()).principal = p // newServer's withRequestState made it
			next.ServeHTTP(w, r)
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
	u, sessionLive, err := st.sessionUser(r.Context(), id, claims.Session)
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
	return principal{user: u, sessionID: claims.Session, amr: claims.AMR,
		needsMFA: cfg.adminRequireMFA && !hasSecondFactor(claims.AMR)}, nil
}

// requireAdmin admits only admins, and with ADMIN_REQUIRE_MFA only through a session opened
// with a second factor, so that a stolen admin password alone does not open the admin routes;
// it must run inside requireAuth.
func requireAdmin(logger *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if currentUser(r.Context()).Role != roleAdmin {
				writeError(w, r, logger, fail(errForbidden, "Admin privileges required"))
				return
			}
			if adminNeedsMFA(r.Context()) {
				writeError(w, r, logger, errAdminNeedsMFA)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// createUser registers a user with the User role and queues the mail that verifies their
// address. A taken username or email is errConflict.
func (s *store) createUser(ctx context.Context, u newUser, passwordHash string) (int64, error) {
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
			err = s.queueVerification(ctx, tx, created)
		}
		if err != nil {
			return err
		}
		return s.audit(ctx, tx, auditRegister, id, id, nil)
	})
	return id, s.takenFields(ctx, err, 0, &u.Username, &u.Email)
}
