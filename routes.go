package main

import (
	"log/slog"
	"net/http"
)

// newServer returns the service's whole HTTP handler; pw does its bcrypt work.
func newServer(cfg config, st *store, pw *hasher, logger *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	addRoutes(mux, cfg, st, pw, logger)
	return withDeadline(withOrigin(cfg.trustedProxies, logRequests(logger, secureHeaders(jsonMuxErrors(mux)))))
}

// routeAdder is the part of a mux that addRoutes uses; tests pass one that records the
// patterns, so that checks over every route cover a new route without being told of it.
type routeAdder interface {
	Handle(pattern string, handler http.Handler)
}

// addRoutes lists the whole API and what guards each route.
func addRoutes(mux routeAdder, cfg config, st *store, pw *hasher, logger *slog.Logger) {
	authed := requireAuth(cfg, st, logger)
	admin := func(h http.Handler) http.Handler { return authed(requireAdmin(logger)(h)) }
	limited := limitAuth(cfg, st, logger)

	mux.Handle("GET /healthz", handleHealth(st))

	mux.Handle("POST /api/auth/register", limited(handleRegister(cfg, st, pw, logger)))
	mux.Handle("POST /api/auth/login", limited(handleLogin(cfg, st, pw, logger)))
	mux.Handle("POST /api/auth/refresh", limited(handleRefresh(cfg, st, logger)))
	mux.Handle("POST /api/auth/logout", authed(handleLogout(cfg, st, logger)))
	mux.Handle("POST /api/auth/logout-all", authed(handleLogoutAll(st, logger)))
	mux.Handle("POST /api/auth/password-reset-request", limited(handlePasswordResetRequest(cfg, st, logger)))
	mux.Handle("POST /api/auth/reset-password/{token}", limited(handleResetPassword(cfg, st, pw, logger)))
	mux.Handle("POST /api/auth/change-password", authed(handleChangePassword(cfg, st, pw, logger)))
	mux.Handle("POST /api/auth/verify-email/{token}", limited(handleVerifyEmail(st, logger)))
	mux.Handle("POST /api/auth/resend-verification", limited(handleResendVerification(cfg, st, logger)))

	mux.Handle("GET /api/users/me", authed(handleMe()))
	mux.Handle("GET /api/users/me/sessions", authed(handleListSessions(cfg, st, logger)))
	mux.Handle("DELETE /api/users/me/sessions/{id}", authed(handleRevokeSession(cfg, st, logger)))
	mux.Handle("GET /api/users/{id}", authed(handleGetUser(st, logger)))
	mux.Handle("PUT /api/users/{id}", authed(handleUpdateUser(cfg, st, logger)))
	mux.Handle("PATCH /api/users/{id}", authed(handleUpdateUser(cfg, st, logger)))
	mux.Handle("DELETE /api/users/{id}", admin(handleDeleteUser(st, logger)))

	mux.Handle("GET /api/admin/users", admin(handleList(logger, parseUserFilter, st.listUsers)))
	mux.Handle("GET /api/admin/audit-log", admin(handleList(logger, parseAuditFilter, st.listAudit)))
}
